"""One call's life, shared by the gateway and the library:

    identify → count → decide → reserve  (admit)
    … the caller talks to the provider …
    settle to the reported usage, or release  (complete / fail), then record.

`Engine.hold()` wraps the two halves in a context manager whose `finally` releases a
reservation on every path the caller did not close itself (exceptions, cancellation,
client disconnects), so nothing is held until its lease expires.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from tallygate.config import DEFAULT_FEATURE, Policy
from tallygate.config.models import key_rules
from tallygate.core import decide as verdict
from tallygate.core.catalog import Catalog
from tallygate.core.limits import Amounts, Identity, Rules, holds_for
from tallygate.core.tokens import acount_request
from tallygate.core.trim import trim_messages
from tallygate.engine.flags import FlagView
from tallygate.engine.ids import new_request_id
from tallygate.errors import FeatureDisabled, LimitError, PermissionDenied, TallygateError
from tallygate.state.base import StateStore
from tallygate.types import (
    CallRecord,
    Count,
    Hold,
    LimitUsage,
    ModelInfo,
    Outcome,
    SettleResult,
    Usage,
)

DEFAULT_LEASE_SECONDS = 600.0
T = TypeVar("T")


class Recorder(Protocol):
    """Where finished calls go (the ledger writer, metrics …). Must not block."""

    def record(self, row: CallRecord) -> None: ...


class Summarizer(Protocol):
    """Writes the summary of `turns` (on_exceed: summarize); the gateway's makes a real,
    separately budgeted upstream call. Raises TallygateError when it cannot."""

    async def summarize(self, adm: Admission, turns: Sequence[Any], max_tokens: int) -> str: ...


SUMMARY_PREFIX = "Summary of the earlier conversation: "
SUMMARIZE_SUFFIX = ":summarize"


class MemoryRecorder:
    """Keeps rows in a list: tests and the library without a ledger."""

    def __init__(self) -> None:
        self.rows: list[CallRecord] = []

    def record(self, row: CallRecord) -> None:
        self.rows.append(row)


@dataclass(slots=True)  # not frozen: its __init__ would cost ~0.1 µs a field, per call
class CallContext:
    """Who makes the call and how it is attributed. Built by the gateway or library."""

    protocol: str  # "openai" | "anthropic"
    route: str  # "chat/completions" | "responses" | "embeddings" | "messages"
    feature: str | None = None
    request_id: str = field(default_factory=new_request_id)
    key_id: str | None = None
    user: str | None = None
    plan: str | None = None
    run: str | None = None
    step: str | None = None
    step_attempt: int | None = None
    key_limits: Mapping[str, Any] | None = None
    allowed_models: Callable[[str], bool] | None = None
    stream: bool = False
    end_user: str | None = None  # the OpenAI `user` field: recorded, not enforced


@dataclass(slots=True)
class Admission:
    """An admitted call: what to send upstream and what is held for it."""

    ctx: CallContext
    model: ModelInfo
    requested_model: str | None
    body: dict[str, Any]  # the client's body with policy's changes applied
    count: Count
    max_output: int | None
    holds: tuple[Hold, ...]
    started: float
    detail: dict[str, Any] = field(default_factory=dict)
    trimmed_tokens: int = 0
    closed: bool = False
    limit_usage: list[LimitUsage] = field(default_factory=list)
    reservation_id: str | None = None  # set when the hold moved (fallback): ids are single-use

    @property
    def feature(self) -> str:
        return self.ctx.feature or DEFAULT_FEATURE

    @property
    def hold_id(self) -> str:
        """The state-store id of the current reservation."""
        return self.reservation_id or self.ctx.request_id


def _messages_key(ctx: CallContext) -> str:
    return "input" if ctx.route == "responses" else "messages"


class Engine:
    def __init__(
        self,
        policy: Policy,
        catalog: Catalog,
        store: StateStore,
        recorder: Recorder,
        *,
        clock: Callable[[], float] = time.time,
        lease: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.policy = policy
        self.catalog = catalog
        self.store = store
        self.recorder = recorder
        self.clock = clock
        self.lease = lease
        static = {name: policy.flag(name) for name in {*policy.features, *policy.flags}}
        self.flags = FlagView(store, static, clock=clock)
        self._key_limits: dict[str, Rules | None] = {}
        self.summarizer: Summarizer | None = None  # None: summarize falls back to trim

    # ------------------------------------------------------------------ admit

    async def admit(self, ctx: CallContext, body: dict[str, Any]) -> Admission:
        started = self.clock()
        requested = body.get("model") if isinstance(body.get("model"), str) else None
        try:
            return await self._admit(ctx, body, started, requested)
        except TallygateError as exc:
            self._record_rejection(ctx, started, requested, exc)
            raise

    async def _admit(
        self, ctx: CallContext, body: dict[str, Any], started: float, requested: str | None
    ) -> Admission:
        feature = ctx.feature or DEFAULT_FEATURE
        if not await self.flags.enabled(feature):
            raise FeatureDisabled(f"Feature {feature!r} is switched off.", feature=feature)
        name = verdict.resolve_model(requested, feature=ctx.feature, step=ctx.step,
                                     policy=self.policy)
        model = self.catalog.get(name)
        if ctx.allowed_models is not None and not ctx.allowed_models(model.name):
            raise PermissionDenied(
                f"This key may not use model {model.name!r}.", param="model"
            )
        adm = Admission(ctx, model, requested, body, Count(0, True, ""), None, (), started)
        if ctx.end_user:
            adm.detail["end_user"] = ctx.end_user
        if name != requested:
            adm.detail["routed"] = {"from": requested, "to": name}
        decision = await self._decide(adm)
        adm.max_output = decision.max_output if ctx.route != "embeddings" else None
        if decision.clamp is not None:
            adm.detail["clamp"] = {
                "to": decision.clamp.value,
                "reason": decision.clamp.reason.value,
                "requested": decision.clamp.requested,
            }
        adm.holds = self._holds(adm, decision)
        try:
            await self._reserve(adm)
        except LimitError as exc:
            if self.policy.feature(ctx.feature).on_limit != "fallback":
                raise
            await self._reserve_fallback(adm, exc)
        return adm

    async def _reserve_fallback(self, adm: Admission, denied: LimitError) -> None:
        """on_limit: fallback — the first fallback model whose limits have room."""
        for name in self.fallback_models(adm):
            try:
                await self.move_to(adm, name, reason=denied.code)
                return
            except TallygateError as exc:
                adm.detail.setdefault("fallback_refused", []).append({name: exc.code})
        raise denied

    def fallback_models(self, adm: Admission) -> list[str]:
        """The feature's fallbacks that speak the call's protocol (others are skipped,
        with a note in the row's detail)."""
        out: list[str] = []
        for name in self.policy.feature(adm.ctx.feature).fallbacks:
            try:
                provider = self.catalog.get(name).provider
            except TallygateError:
                adm.detail.setdefault("fallback_skipped", []).append({name: "unknown model"})
                continue
            configured = self.policy.providers.get(provider)
            if configured is not None and configured.protocol != adm.ctx.protocol:
                note = f"{provider} speaks {configured.protocol}, not {adm.ctx.protocol}"
                adm.detail.setdefault("fallback_skipped", []).append({name: note})
                continue
            if name != adm.model.name:
                out.append(name)
        return out

    async def move_to(self, adm: Admission, model_name: str, *, reason: str) -> None:
        """Move the call to another model: release the current hold, decide again for
        the new model and reserve its holds under a fresh id (ids are single-use)."""
        previous = adm.model.name
        allowed = adm.ctx.allowed_models
        if allowed is not None and not allowed(model_name):  # a key's allow-list binds too
            raise PermissionDenied(f"This key may not use model {model_name!r}.",
                                   param="model")
        if adm.holds:
            await self.store.release(adm.hold_id, now=self.clock())
        moves = adm.detail.setdefault("fallback", [])
        moves.append({"from": previous, "to": model_name, "reason": reason})
        adm.model = self.catalog.get(model_name)
        adm.reservation_id = f"{adm.ctx.request_id}~{len(moves)}"
        decision = await self._decide(adm)
        adm.max_output = decision.max_output if adm.ctx.route != "embeddings" else None
        adm.holds = self._holds(adm, decision)
        await self._reserve(adm)

    async def trim_input(self, adm: Admission, target: int) -> bool:
        """Context-length recovery: drop the oldest turns down to about `target` input
        tokens. False when nothing could be dropped."""
        before = adm.count.tokens
        plan = verdict.Decision(verdict.Action.TRIM, adm.model.name, adm.ctx.feature,
                                before, adm.count.exact, trim_to=max(1, target))
        try:
            self._trim(adm, plan)
        except verdict.InputBudgetExceeded:
            return False
        adm.count = await acount_request(adm.ctx.protocol, adm.ctx.route, adm.body, adm.model)
        if adm.count.tokens >= before:
            return False
        adm.trimmed_tokens += before - adm.count.tokens
        return True

    async def _decide(self, adm: Admission) -> verdict.Decision:
        """Count and decide; summarise or trim once when the feature allows and the
        verdict asks."""
        decision = await self._count_and_decide(adm)
        original = decision.input_tokens
        if decision.action is verdict.Action.SUMMARIZE and await self._summarize(adm, decision):
            decision = await self._count_and_decide(adm)
            adm.detail["summarized"]["to"] = decision.input_tokens
            adm.trimmed_tokens = original - decision.input_tokens
        if decision.action in (verdict.Action.TRIM, verdict.Action.SUMMARIZE):
            before = decision.input_tokens
            self._trim(adm, decision)
            decision = await self._count_and_decide(adm)
            adm.trimmed_tokens = original - decision.input_tokens
            adm.detail["trimmed"] = {"from": before, "to": decision.input_tokens}
        if decision.action is verdict.Action.REJECT:
            assert decision.error is not None
            raise decision.error
        if decision.action is not verdict.Action.ADMIT:
            raise verdict.InputBudgetExceeded(
                f"Input of {decision.input_tokens} tokens still exceeds the budget of "
                f"feature {adm.feature!r} after trimming.",
                param="messages",
                limit=decision.trim_to or 0,
                requested=decision.input_tokens,
            )
        return decision

    async def _count_and_decide(self, adm: Admission) -> verdict.Decision:
        ctx = adm.ctx
        adm.count = await acount_request(ctx.protocol, ctx.route, adm.body, adm.model)
        facts = verdict.RequestFacts(
            protocol=ctx.protocol,
            model=adm.model.name,
            feature=ctx.feature,
            input=adm.count,
            max_output=_requested_output(ctx, adm.body),
            n=_choices(adm.body),
            step=ctx.step,
            identity=self._identity(ctx),
            output_floor=_output_floor(ctx, adm.body),
        )
        return verdict.decide(facts, self.policy, adm.model)

    def _trim(self, adm: Admission, decision: verdict.Decision) -> None:
        from tallygate.core.tokens import CHAT_REPLY_PRIMING, message_tokens

        key = _messages_key(adm.ctx)
        messages = adm.body.get(key)
        if not isinstance(messages, list):
            raise verdict.InputBudgetExceeded(
                f"Input of {decision.input_tokens} tokens is over the budget of feature "
                f"{adm.feature!r} and has no turns to trim.",
                param=key,
                limit=decision.trim_to or 0,
                requested=decision.input_tokens,
            )
        fixed = decision.input_tokens - sum(message_tokens(m, adm.model) for m in messages)
        result = trim_messages(
            messages,
            decision.trim_to or 0,
            lambda m: message_tokens(m, adm.model),
            overhead=max(fixed, CHAT_REPLY_PRIMING),
        )
        adm.body = {**adm.body, key: list(result.messages)}
        adm.detail["trimmed_turns"] = result.removed_count

    async def _summarize(self, adm: Admission, decision: verdict.Decision) -> bool:
        """Replace the oldest turns by a summary; False (the caller trims) when there is
        no summarizer, nothing to replace, or the summary call failed."""
        from tallygate.core.tokens import message_tokens

        key = _messages_key(adm.ctx)
        messages = adm.body.get(key)
        if self.summarizer is None or adm.feature.endswith(SUMMARIZE_SUFFIX):
            adm.detail["summarize"] = "no summarizer here: trimmed instead"
            return False
        if not isinstance(messages, list) or not decision.trim_to:
            return False
        cap = max(16, min(512, decision.trim_to // 4))
        fixed = decision.input_tokens - sum(message_tokens(m, adm.model) for m in messages)
        try:
            kept = trim_messages(messages, decision.trim_to - cap - 16,
                                 lambda m: message_tokens(m, adm.model), overhead=fixed).messages
        except verdict.InputBudgetExceeded:
            return False
        kept_ids = {id(m) for m in kept}
        old = [m for m in messages if id(m) not in kept_ids]
        if not old:
            return False
        try:
            text = await self.summarizer.summarize(adm, old, cap)
        except TallygateError as exc:
            adm.detail["summarize"] = f"failed ({exc.code}): trimmed instead"
            return False
        role = "user" if adm.ctx.protocol == "anthropic" else "system"
        note = {"role": role, "content": SUMMARY_PREFIX + text}
        first = messages.index(old[0])
        rebuilt = [m for m in messages[:first] if id(m) in kept_ids] + [note]
        rebuilt += [m for m in messages[first:] if id(m) in kept_ids]
        adm.body = {**adm.body, key: rebuilt}
        adm.detail["summarized"] = {"turns": len(old), "from": decision.input_tokens}
        return True

    def _identity(self, ctx: CallContext) -> Identity:
        limits = None
        if ctx.key_id is not None and ctx.key_limits:
            if ctx.key_id not in self._key_limits:
                self._key_limits[ctx.key_id] = key_rules(ctx.key_limits)
            limits = self._key_limits[ctx.key_id]
        return Identity(ctx.key_id, ctx.user, ctx.plan, ctx.run, limits)

    def _holds(self, adm: Admission, decision: verdict.Decision) -> tuple[Hold, ...]:
        if adm.ctx.route != "embeddings":
            return decision.holds
        # Embeddings produce no output tokens: hold the input alone.
        tokens = adm.count.tokens
        amounts = Amounts(tokens, adm.model.cost_nusd(Usage(input_tokens=tokens)))
        return holds_for(self.policy.limit_index, self._identity(adm.ctx), feature=adm.ctx.feature,
                         model=adm.model.name, amounts=amounts)

    async def _reserve(self, adm: Admission) -> None:
        if not adm.holds:
            return
        now = self.clock()
        if adm.ctx.stream:  # stream headers go out before settling: read usage now
            denial, adm.limit_usage = await self.store.reserve_and_read(
                adm.hold_id, adm.holds, lease=self.lease, now=now,
                read=_tightest_holds(adm.holds))
        else:
            denial = await self.store.reserve(adm.hold_id, adm.holds, lease=self.lease,
                                              now=now)
        if denial is not None:
            raise verdict.denial_to_error(
                denial, now, retry_within=self.policy.refusals.retry_within)

    async def _usages(self, adm: Admission, now: float) -> list[LimitUsage]:
        """Usage of the tightest token and request limits."""
        return list(await asyncio.gather(*(
            self.store.usage(h.key, limit=h.limit, window=h.window, rolling=h.rolling, now=now)
            for h in _tightest_holds(adm.holds)
        )))

    async def limit_headers(self, adm: Admission) -> dict[str, str]:
        """x-ratelimit-* for the tightest token and request limits that applied."""
        now = self.clock()
        usages = adm.limit_usage
        if not usages:
            try:
                usages = await self._usages(adm, now)
            except TallygateError:  # an unreadable store costs the headers, not the answer
                return {}
        return verdict.ratelimit_headers(usages, now) if usages else {}

    # ------------------------------------------------------------------ finish

    async def complete(
        self,
        adm: Admission,
        usage: Usage,
        *,
        status: int = 200,
        ttft_ms: int | None = None,
        retries: int = 0,
        exact: bool = True,
        outcome: Outcome | None = None,
    ) -> CallRecord:
        """Settle the reservation to the provider-reported usage and record the call."""
        adm.closed = True
        cost = adm.model.cost_nusd(usage)
        actual = {"tokens": usage.total_tokens, "cost": cost, "requests": 1}
        result = await self._finish(adm, actual)
        if result.overrun:
            adm.detail["overrun"] = dict(result.overrun)
        if outcome is None:
            outcome = Outcome.TRIMMED if adm.trimmed_tokens else Outcome.OK
        row = self._row(adm, outcome, status, usage, cost, exact=exact, ttft_ms=ttft_ms,
                        retries=retries)
        self.recorder.record(row)
        return row

    async def fail(
        self,
        adm: Admission,
        *,
        status: int,
        error_code: str,
        usage: Usage | None = None,
        retries: int = 0,
        ttft_ms: int | None = None,
    ) -> CallRecord:
        """The call failed. Tokens generated before the failure are settled (they are
        billed); a call that produced none gives its whole reservation back."""
        adm.closed = True
        cost = 0
        actual = None  # nothing generated: the whole reservation goes back
        if usage is not None and usage.total_tokens > 0:
            cost = adm.model.cost_nusd(usage)
            actual = {"tokens": usage.total_tokens, "cost": cost, "requests": 1}
        await self._finish(adm, actual)
        row = self._row(adm, Outcome.ERROR, status, usage or Usage(), cost, exact=True,
                        ttft_ms=ttft_ms, retries=retries, error_code=error_code)
        self.recorder.record(row)
        return row

    async def _finish(self, adm: Admission, actual: dict[str, int] | None) -> SettleResult:
        """Settle (actual) or release (None) the call's reservation, reading the usage
        its headers show. A call no limit applies to held nothing: the store is not
        asked (it may not even be usable by this process: a SQLite file another owns)."""
        if not adm.holds:
            return SettleResult()
        result, adm.limit_usage = await self.store.finish_and_read(
            adm.hold_id, actual, now=self.clock(), read=_tightest_holds(adm.holds))
        return result

    def record_cached(
        self, ctx: CallContext, model: ModelInfo, requested: str | None, saved: Usage,
        started: float, detail: Mapping[str, Any] | None = None,
    ) -> CallRecord:
        """A cache hit: nothing reserved or charged; the tokens it saved are recorded."""
        adm = Admission(ctx, model, requested, {}, Count(0, True, ""), None, (), started,
                        detail=dict(detail or {}))
        row = self._row(adm, Outcome.CACHED, 200, Usage(), 0, exact=True, ttft_ms=None,
                        retries=0)
        row = dataclasses.replace(row, tokens_saved=saved.total_tokens)
        self.recorder.record(row)
        return row

    @asynccontextmanager
    async def hold(self, ctx: CallContext, body: dict[str, Any]) -> AsyncIterator[Admission]:
        """admit on enter; on any exit the caller did not close, release and record."""
        adm = await self.admit(ctx, body)
        try:
            yield adm
        finally:
            if not adm.closed:
                await self.fail(adm, status=499, error_code="aborted")

    # ------------------------------------------------------------------ rows

    def _row(
        self,
        adm: Admission,
        outcome: Outcome,
        status: int,
        usage: Usage,
        cost: int,
        *,
        exact: bool,
        ttft_ms: int | None,
        retries: int,
        error_code: str | None = None,
    ) -> CallRecord:
        ctx = adm.ctx
        return CallRecord(
            request_id=ctx.request_id,
            ts=adm.started,
            outcome=outcome,
            status=status,
            key_id=ctx.key_id,
            user=ctx.user,
            plan=ctx.plan,
            feature=adm.feature,
            run=ctx.run,
            step=ctx.step,
            step_attempt=ctx.step_attempt,
            provider=adm.model.provider,
            model_requested=adm.requested_model,
            model_used=adm.model.name,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            exact=exact,
            cost_nusd=cost,
            latency_ms=int((self.clock() - adm.started) * 1000),
            ttft_ms=ttft_ms,
            retries=retries,
            error_code=error_code,
            trimmed_tokens=adm.trimmed_tokens,
            stream=ctx.stream,
            detail=orjson.dumps(adm.detail).decode() if adm.detail else None,
        )

    def _record_rejection(
        self, ctx: CallContext, started: float, requested: str | None, exc: TallygateError
    ) -> None:
        detail: dict[str, Any] = {"message": exc.message}
        if isinstance(exc, LimitError) and exc.limit_key:
            detail["limit"] = exc.limit_key
        self.recorder.record(
            CallRecord(
                request_id=ctx.request_id,
                ts=started,
                outcome=Outcome.REJECTED,
                status=exc.status,
                key_id=ctx.key_id,
                user=ctx.user,
                plan=ctx.plan,
                feature=ctx.feature or DEFAULT_FEATURE,
                run=ctx.run,
                step=ctx.step,
                step_attempt=ctx.step_attempt,
                model_requested=requested,
                latency_ms=int((self.clock() - started) * 1000),
                error_code=exc.code,
                stream=ctx.stream,
                detail=orjson.dumps(detail).decode(),
            )
        )


def _requested_output(ctx: CallContext, body: Mapping[str, Any]) -> int | None:
    if ctx.route == "embeddings":
        return None
    if ctx.protocol == "anthropic":
        from tallygate.providers import anthropic as adapter
    else:
        from tallygate.providers import openai as adapter  # type: ignore[no-redef]
    return adapter.requested_max_output(ctx.route, body)


def _output_floor(ctx: CallContext, body: Mapping[str, Any]) -> tuple[int, str, str] | None:
    if ctx.route == "embeddings":
        return None
    if ctx.protocol == "anthropic":
        from tallygate.providers import anthropic as adapter
    else:
        from tallygate.providers import openai as adapter  # type: ignore[no-redef]
    return adapter.output_floor(ctx.route, body)


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and n is not None else 1


def _tightest_holds(holds: Sequence[Hold]) -> list[Hold]:
    """The token hold and the request hold with the least headroom by limit."""
    best: dict[str, Hold] = {}
    for hold in holds:
        metric = hold.metric.value
        if metric == "cost":
            continue
        current = best.get(metric)
        if current is None or hold.limit - hold.amount < current.limit - current.amount:
            best[metric] = hold
    return list(best.values())
