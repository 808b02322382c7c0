"""The call the engine owns: who makes it (`CallContext`, filled by a front door), what
policy made of it (`Call`), and what happened on the way (`CallNotes`, the ledger row's
`detail`, schema in docs/ledger.md).

Only the engine creates a `Call` and changes it; front doors read it (the body to send,
the model, the limits' usage for the headers) and feed stream bytes to its meter."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tallygate.config import DEFAULT_FEATURE, Policy
from tallygate.providers.base import WireAdapter
from tallygate.providers.common import StreamTap
from tallygate.types import Count, Hold, LimitUsage, ModelInfo, Usage

DETAIL_VERSION = 1
# Notes written into `detail` as they are (the others are reshaped in CallNotes.detail).
_LISTED = ("unknown_feature", "summarized", "summarize", "trimmed_turns", "attempts",
           "halved", "trimmed_on_retry", "recovery", "fallback", "fallback_refused",
           "fallback_skipped", "overrun", "usage", "message", "limit", "stopped", "reserve",
           "conversation")


@dataclass(slots=True)  # per-call record: not frozen (see types.py)
class CallContext:
    """Who makes the call and how it is attributed. Built by the gateway or the library
    from bounded values (engine/bounds.py); the server mints `call_id`."""

    protocol: str  # "openai" | "anthropic"
    route: str  # "chat/completions" | "responses" | "embeddings" | "messages"
    call_id: str
    feature: str | None = None
    client_request_id: str | None = None  # the caller's X-Tallygate-Request-Id: never a key
    key_id: str | None = None
    user: str | None = None
    plan: str | None = None
    run: str | None = None
    step: str | None = None
    step_attempt: int | None = None
    key_limits: Any = None  # the key's own limits, as stored on the key
    allowed_models: Callable[[str], bool] | None = None
    stream: bool = False
    end_user: str | None = None  # the OpenAI `user` field: recorded, not enforced
    # Transport facts the recovery policy needs (gateway: from the client's headers).
    client_retries: int = 0  # the client's own retry count of this request (Stainless)
    client_timeout: float | None = None  # the client's own per-request timeout
    forward_headers: dict[str, str] = field(default_factory=dict)  # to the upstream as sent
    upstream_query: str = ""  # the request's query string, passed on
    parent: str | None = None  # a sub-call's (summary) parent call id
    # The front door can end a stream early with a length stop (the gateway's relay):
    # only then may a stream hold its output a slice at a time (`reserve: streamed`).
    can_cut: bool = False
    # True once the client has gone (the server's disconnect flag): an answer settled
    # after that is recorded as 499, the status of a call nobody received.
    client_gone: Callable[[], bool] | None = None


@dataclass(slots=True)
class CallNotes:
    """What policy and the upstream did to one call, typed. Lists start as None so a
    plain call allocates nothing; `detail()` is the ledger's `detail` JSON object."""

    end_user: str | None = None
    unknown_feature: str | None = None  # the name asked for, counted as `default`
    routed: tuple[str | None, str] | None = None  # (requested, resolved)
    clamp: tuple[int, str, int | None] | None = None  # (to, reason, requested)
    summarized: dict[str, int] | None = None  # turns, from, to
    summarize: str | None = None  # why a summary was not used
    summary_cache: bool = False
    trimmed: tuple[int, int] | None = None  # (from, to) input tokens
    trimmed_turns: int | None = None
    attempts: list[dict[str, Any]] | None = None  # one per failed upstream try
    halved: list[dict[str, int]] | None = None
    trimmed_on_retry: list[dict[str, int]] | None = None
    recovery: str | None = None
    client_retrying: bool = False
    fallback: list[dict[str, str]] | None = None
    fallback_refused: list[dict[str, str]] | None = None
    fallback_skipped: list[dict[str, str]] | None = None
    overrun: dict[str, int] | None = None
    cache_key: str | None = None  # a cache hit's key prefix
    usage: str | None = None  # why the upstream's usage was not used
    message: str | None = None  # a refusal's message
    limit: str | None = None  # the limit a refusal hit
    stopped: str | None = None  # why tallygate ended the call early (shutdown, budget)
    reserve: dict[str, int] | None = None  # a streamed reservation: slice, cap
    conversation: str | None = None  # a run-less call's runaway thread (core/runaway.py)

    def note_attempt(self, entry: dict[str, Any]) -> None:
        if self.attempts is None:
            self.attempts = []
        self.attempts.append(entry)

    def note_fallback(self, old: str, new: str, reason: str) -> None:
        if self.fallback is None:
            self.fallback = []
        self.fallback.append({"from": old, "to": new, "reason": reason})

    def note_refused(self, model: str, code: str) -> None:
        if self.fallback_refused is None:
            self.fallback_refused = []
        self.fallback_refused.append({model: code})

    def note_skipped(self, model: str, why: str) -> None:
        if self.fallback_skipped is None:
            self.fallback_skipped = []
        self.fallback_skipped.append({model: why})

    def note_halved(self, old: int, new: int) -> None:
        if self.halved is None:
            self.halved = []
        self.halved.append({"from": old, "to": new})

    def note_trim_on_retry(self, old: int, new: int) -> None:
        if self.trimmed_on_retry is None:
            self.trimmed_on_retry = []
        self.trimmed_on_retry.append({"from": old, "to": new})

    def detail(self) -> dict[str, Any] | None:
        """The documented, versioned `detail` object; None when nothing happened."""
        out: dict[str, Any] = {}
        if self.end_user is not None:
            out["end_user"] = self.end_user
        if self.routed is not None:
            out["routed"] = {"from": self.routed[0], "to": self.routed[1]}
        if self.clamp is not None:
            to, reason, requested = self.clamp
            out["clamp"] = {"to": to, "reason": reason, "requested": requested}
        for name in _LISTED:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.trimmed is not None:
            out["trimmed"] = {"from": self.trimmed[0], "to": self.trimmed[1]}
        if self.summary_cache:
            out["summary_cache"] = "hit"
        if self.client_retrying:
            out["client_retrying"] = True
        if self.cache_key is not None:
            out["cache"] = "hit"
            out["key"] = self.cache_key
        if not out:
            return None
        out["v"] = DETAIL_VERSION
        return out


@dataclass(slots=True, eq=False)  # identity: the engine keeps the open ones in a set
class Call:
    """A call being made: what to send upstream, what is held for it, what it used.

    `hold_id` is the state-store reservation: the call id at first, a fresh id after a
    fallback moved the hold (reservation ids are single-use)."""

    ctx: CallContext
    adapter: WireAdapter
    model: ModelInfo
    requested_model: str | None
    body: dict[str, Any]  # the client's body with policy's changes applied
    started: float  # engine clock (unix seconds)
    policy: Policy  # the policy the call started under (a reload does not change it)
    count: Count = field(default_factory=lambda: Count(0, True, ""))
    max_output: int | None = None
    holds: tuple[Hold, ...] = ()
    hold_id: str = ""
    notes: CallNotes = field(default_factory=CallNotes)
    trimmed_tokens: int = 0
    retries: int = 0  # extra upstream tries (retries, recoveries, fallbacks)
    limit_usage: list[LimitUsage] = field(default_factory=list)  # for x-ratelimit-*
    closed: bool = False
    # Timing, on the monotonic clock: when the answering upstream try started and, for
    # streams, when the first token arrived; `upstream_ms` is set when the call ends.
    upstream_started: float | None = None
    upstream_ms: int | None = None
    first_token_at: float | None = None
    tap: StreamTap | None = None  # a stream's meter: what was relayed so far
    # Streamed reservation (a stream holding its output a slice at a time): the output
    # tokens held so far, the slice, and the fed bytes past which to count again.
    held_output: int | None = None
    stream_slice: int = 0
    next_check: int = 0

    @property
    def feature(self) -> str:
        return self.ctx.feature or DEFAULT_FEATURE

    @property
    def id(self) -> str:
        return self.ctx.call_id

    def held_usage(self) -> Usage:
        """What the reservation assumed: the estimate charged when no usage came back."""
        return Usage(self.count.tokens, self.max_output or 0)

    def meter(self) -> StreamTap:
        """The tap the front door feeds a stream's bytes (or events) through."""
        if self.tap is None:
            self.tap = self.adapter.stream_tap(
                self.ctx.route, self.body, model=self.model.name,
                cuttable=self.held_output is not None, cut_id=self.ctx.call_id)
        return self.tap

    @property
    def streamed(self) -> bool:
        """The call holds its output a slice at a time (it may be cut at a refusal)."""
        return self.held_output is not None

    def saw_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def usage_so_far(self) -> Usage | None:
        """A stream's usage up to now (the relayed tokens), None when nothing streamed."""
        if self.tap is None:
            return None
        return self.tap.usage_so_far(input_tokens=self.count.tokens)

    def ttft_ms(self) -> int | None:
        if self.first_token_at is None or self.upstream_started is None:
            return None
        return int((self.first_token_at - self.upstream_started) * 1000)
