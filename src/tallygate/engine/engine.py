"""One call's life, owned here for both front doors:

    prepare   flags → route the model → the key's allow-list           (a `Call` exists)
    reserve   count → decide (trim / summarise / clamp) → reserve       (admitted)
    send      through the front door's `Port`, with one recovery policy (engine/recovery.py)
    settle    to the provider-reported usage, or release → record the row

`run()` does all of it for a call answered at once; a stream is `start()`ed, relayed by
the front door through the call's meter, and ended with `finish_stream()`. Every
admitted call is closed exactly once: `owning()` closes whatever a front door left open
(an exception, a cancellation, a client gone) with the tokens relayed so far, shielded
from a second cancellation, and `close_open_calls()` does it for calls still open when
the process stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import orjson

from tallygate.cache import ResponseCache
from tallygate.config import DEFAULT_FEATURE, Policy
from tallygate.config.models import key_rules
from tallygate.config.names import PolicyNames
from tallygate.core import decide
from tallygate.core.catalog import Catalog
from tallygate.core.limits import Amounts, Identity, Rules, holds_for, run_owner
from tallygate.core.runaway import InputHistory, Verdict, conversation_key
from tallygate.core.tokens import CHAT_REPLY_PRIMING, acount_request, message_tokens
from tallygate.core.trim import trim_messages
from tallygate.engine import recovery, rows
from tallygate.engine.bounds import usage_is_sane
from tallygate.engine.cache import CallCache
from tallygate.engine.call import Call, CallContext
from tallygate.engine.flags import FlagView
from tallygate.engine.ids import new_call_id
from tallygate.engine.ports import Answer, Port
from tallygate.engine.retry import RetrySettings
from tallygate.engine.summarize import SUFFIX as SUMMARIZE_SUFFIX
from tallygate.engine.summarize import Summarizer
from tallygate.errors import (
    FeatureDisabled,
    InvalidRequest,
    LimitError,
    PermissionDenied,
    TallygateError,
    UpstreamError,
    UpstreamInvalidUsage,
)
from tallygate.providers.base import adapter_for
from tallygate.state.base import StateStore
from tallygate.types import (
    CallRecord,
    Denial,
    Hold,
    LimitUsage,
    Metric,
    Outcome,
    SettleResult,
    Usage,
    Window,
)

DEFAULT_LEASE_SECONDS = 600.0
STREAM_MARGIN = 256  # output tokens a streamed hold keeps ahead of what was relayed
SUMMARY_PREFIX = "Summary of the earlier conversation: "
log = logging.getLogger("tallygate.engine")


class Recorder(Protocol):
    """Where finished calls go (the ledger writer, metrics …). Must not block."""

    def record(self, row: CallRecord) -> None: ...


class MemoryRecorder:
    """Keeps rows in a list: tests and the library without a ledger."""

    def __init__(self) -> None:
        self.rows: list[CallRecord] = []

    def record(self, row: CallRecord) -> None:
        self.rows.append(row)


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
        cache: ResponseCache | None = None,
        retry: RetrySettings | None = None,
        flag_refresh: float = 0.5,
    ) -> None:
        self.policy = policy
        self.catalog = catalog
        self.store = store
        self.recorder = recorder
        self.clock = clock
        self.lease = lease
        self.cache = CallCache(policy, cache)
        self.summarizer = Summarizer(cache)
        self.retry = retry if retry is not None else RetrySettings()
        static = {name: policy.flag(name) for name in {*policy.features, *policy.flags}}
        self.flags = FlagView(store, static, clock=clock, refresh=flag_refresh)
        self._key_limits: dict[str, Rules | None] = {}
        self._names = PolicyNames(policy, catalog)
        self._inputs: InputHistory | None = None  # the runaway guard's history
        self._open: set[Call] = set()  # admitted, not yet closed
        self._closing: set[asyncio.Task[Any]] = set()

    def reload(self, policy: Policy, catalog: Catalog) -> None:
        """Take a new policy for the calls that start from now on; calls in flight keep
        the one they started with (`Call.policy`); limits keep their counters (they live
        in the store, keyed by scope, not by policy)."""
        self.policy = policy
        self.catalog = catalog
        self._names = PolicyNames(policy, catalog)
        self.flags.reload({name: policy.flag(name) for name in {*policy.features, *policy.flags}})
        self.cache.policy = policy

    # ------------------------------------------------------------------ whole calls

    async def run(self, ctx: CallContext, body: dict[str, Any], port: Port, *,
                  cache: bool | None = None) -> tuple[Call, Answer]:
        """Admit, send (with recovery), settle and record a call answered at once. A
        refusal raises (its row recorded); an upstream failure is in the answer.
        `cache`: the caller's explicit cache choice (None: the feature's)."""
        call = await self.prepare(ctx, body)
        key, hit = await self._lookup(call, cache)
        if hit is not None:
            return call, hit
        await self.reserve(call, port=port)
        async with self.owning(call):
            answer = await self.send(call, port)
            answer = await self.settle(call, answer)
        if key is not None and answer.ok:
            stored = answer.body or _as_json(answer.payload)
            if stored:
                await self.cache.store(call, key, stored)
        return call, answer

    async def start(self, ctx: CallContext, body: dict[str, Any], port: Port, *,
                    cache: bool | None = None) -> tuple[Call, Answer]:
        """Admit and send a streaming call. When the answer is an open stream the call
        stays open for the front door to relay and `finish_stream()`; otherwise (a
        cache hit to replay, a failure) it is closed here."""
        call = await self.prepare(ctx, body)
        _, hit = await self._lookup(call, cache)
        if hit is not None:
            return call, hit
        await self.reserve(call, port=port)
        async with self.owning(call):
            answer = await self.send(call, port)
            if not (answer.ok and answer.stream is not None):
                answer = await self.settle(call, answer)
        return call, answer

    async def _lookup(self, call: Call, asked: bool | None) -> tuple[str | None, Answer | None]:
        """(cache key when the call opts in, the answer of a cache hit)."""
        if not self.cache.wanted(call.ctx, asked):
            return None, None
        key, found = await self.cache.lookup(call)
        if found is None:
            return key, None
        raw = found.encode()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return key, None  # an entry we cannot read is a miss
        saved = (call.adapter.usage_from_body(call.ctx.route, parsed)
                 if isinstance(parsed, dict) else None)
        call.notes.cache_key = key[:16]
        self.record_cached(call, saved or Usage())
        return key, Answer(200, body=raw, payload=parsed, cached=True)

    @asynccontextmanager
    async def owning(self, call: Call) -> AsyncIterator[Call]:
        """A block that ends by an exception closes the call it left open: cancelled (a
        client gone, a shutdown) as 499 with the tokens relayed so far, failed as 500.
        The closing runs to its end even if the task is cancelled again meanwhile."""
        try:
            yield call
        except asyncio.CancelledError:
            if not call.closed:
                await self._shielded(self.abandon(call))
            raise
        except BaseException:
            if not call.closed:
                log.exception("call %s failed inside tallygate", call.id)
                await self._shielded(self.abandon(call, status=500, code="internal_error"))
            raise

    async def abandon(self, call: Call, *, status: int = 499,
                      code: str = "client_disconnected") -> None:
        """Close a call nobody will finish: settle the tokens it relayed (a stream) or
        give the hold back, and record it."""
        if call.closed:
            return
        usage = call.usage_so_far()
        await self.fail(call, status=status, error_code=call.notes.stopped or code,
                        usage=usage)

    async def close_open_calls(self, *, code: str = "shutdown") -> int:
        """Close every call still open (the process is stopping); returns how many."""
        calls = [c for c in self._open if not c.closed]
        for call in calls:
            call.notes.stopped = call.notes.stopped or code
            await self.abandon(call, code=code)
        await self.drain()
        return len(calls)

    async def drain(self) -> None:
        """Wait for closings that outlived a cancelled request."""
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def _shielded(self, coro: Any) -> None:
        """Run a closing to its end even if the caller is cancelled (again) meanwhile."""
        task = asyncio.ensure_future(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        await asyncio.shield(task)

    # ------------------------------------------------------------------ admission

    async def prepare(self, ctx: CallContext, body: dict[str, Any]) -> Call:
        """Flags, routing and the key's allow-list: the call, before anything is counted
        or held (the cache looks up here). A refusal is recorded and raised."""
        started = self.clock()
        raw_model = body.get("model")
        requested = raw_model if isinstance(raw_model, str) else None
        try:
            asked = self._known_feature(ctx)
            feature = ctx.feature or DEFAULT_FEATURE
            if not await self.flags.enabled(feature):
                raise FeatureDisabled(f"Feature {feature!r} is switched off.", feature=feature)
            name = decide.resolve_model(requested, feature=ctx.feature, step=ctx.step,
                                        policy=self.policy)
            model = self.catalog.get(name)
            if ctx.allowed_models is not None and not ctx.allowed_models(model.name):
                raise PermissionDenied(f"This key may not use model {model.name!r}.",
                                       param="model")
        except TallygateError as exc:
            self.record_refusal(ctx, exc, started=started, requested=requested)
            raise
        call = Call(ctx, adapter_for(ctx.protocol), model, requested, body, started,
                    policy=self.policy, hold_id=ctx.call_id)
        call.notes.end_user = ctx.end_user
        call.notes.unknown_feature = asked
        if name != requested:
            call.notes.routed = (requested, name)
        return call

    def _known_feature(self, ctx: CallContext) -> str | None:
        """A feature name the policy does not define is the `default` feature — its
        limits on one shared counter, its kill switch — or refused (`unknown_features:
        reject`): invented names must not each get a fresh copy of the default budget.
        Returns the name asked for when it was folded into `default`."""
        name = ctx.feature
        if (name is None or name == DEFAULT_FEATURE or name in self.policy.features
                or ctx.parent is not None):  # (a summary's `<feature>:summarize`: ours)
            return None
        if self.policy.unknown_features == "reject":
            raise InvalidRequest(self._names.feature_problem(name) or name,
                                 param="X-Tallygate-Feature")
        ctx.feature = DEFAULT_FEATURE
        return name

    async def admit(self, ctx: CallContext, body: dict[str, Any], *,
                    port: Port | None = None) -> Call:
        """prepare() and reserve(): an admitted call, holding its limits."""
        call = await self.prepare(ctx, body)
        await self.reserve(call, port=port)
        return call

    async def reserve(self, call: Call, *, port: Port | None = None) -> None:
        """Count, decide and reserve. `port` lets on_exceed: summarize make its
        summary call (without one the turns are trimmed instead)."""
        try:
            decision = await self._decide(call, port)
            self._runaway(call)
            self._apply(call, decision)
            try:
                await self._reserve(call)
            except LimitError as exc:
                if call.policy.feature(call.ctx.feature).on_limit != "fallback":
                    raise
                if not await recovery.fall_back(self, call, exc.code):
                    raise
        except TallygateError as exc:
            call.closed = True
            self.record_refusal(call.ctx, exc, started=call.started,
                                requested=call.requested_model)
            raise
        self._open.add(call)

    def _runaway(self, call: Call) -> None:
        """The runaway-context guard's refusal (`on_runaway: refuse`; alerting alone is
        the alert engine's, from the rows): a run — or, without one, a conversation —
        whose input per call keeps growing past the policy's bounds (core/runaway.py).
        A run-less call notes its conversation key on its row, so the alert engine
        follows the same thread."""
        guard = call.policy.limits.run.runaway
        if guard is None:
            return
        owner = run_owner(self._identity(call.ctx))
        if call.ctx.run is not None:
            thread = f"{owner}:{call.ctx.run}"
        else:
            turns = call.body.get(call.adapter.messages_key(call.ctx.route))
            thread = conversation_key(owner, turns[:2] if isinstance(turns, list) else ())
            call.notes.conversation = thread
        if not guard.refuse:
            return
        if self._inputs is None or self._inputs.policy is not guard:
            self._inputs = InputHistory(guard)
        judged = self._inputs.check(thread, call.count.tokens)
        if judged.verdict is Verdict.REFUSE:
            raise judged.error(call.ctx.run, conversation=call.notes.conversation)

    def _apply(self, call: Call, decision: decide.Decision) -> None:
        call.max_output = decision.max_output if call.ctx.route != "embeddings" else None
        if decision.clamp is not None:
            clamp = decision.clamp
            call.notes.clamp = (clamp.value, clamp.reason.value, clamp.requested)
        call.holds = self._holds(call, decision)
        feature = call.policy.feature(call.ctx.feature)
        total = (call.max_output or 0) * _choices(call.body)
        if (call.ctx.stream and call.ctx.can_cut and call.holds and feature.reserve != "full"
                and call.max_output and feature.stream_slice < total):
            self._hold_a_slice(call, feature.stream_slice, total)

    def _hold_a_slice(self, call: Call, slice_: int, total: int) -> None:
        """Streamed reservation: hold the input and one slice of output; the stream
        relay grows the hold by a slice at a time (`keep_up`)."""
        tokens = call.count.tokens
        amounts = Amounts(tokens + slice_, decide.cost_upper_bound(call.model, tokens, slice_))
        call.holds = holds_for(call.policy.limit_index, self._identity(call.ctx),
                               feature=call.ctx.feature, model=call.model.name,
                               amounts=amounts)
        call.held_output, call.stream_slice = slice_, slice_
        call.next_check = slice_ // 2  # bytes ≥ tokens: no count before this many bytes
        call.notes.reserve = {"slice": slice_, "cap": total}

    def fallback_models(self, call: Call) -> list[str]:
        """The feature's fallbacks that speak the call's protocol (others are skipped,
        with a note on the call)."""
        out: list[str] = []
        for name in call.policy.feature(call.ctx.feature).fallbacks:
            try:
                provider = self.catalog.get(name).provider
            except TallygateError:
                call.notes.note_skipped(name, "unknown model")
                continue
            configured = call.policy.providers.get(provider)
            if configured is not None and configured.protocol != call.ctx.protocol:
                call.notes.note_skipped(
                    name, f"{provider} speaks {configured.protocol}, not {call.ctx.protocol}")
                continue
            if name != call.model.name:
                out.append(name)
        return out

    async def move_to(self, call: Call, model_name: str, *, reason: str) -> None:
        """Move the call to another model: give the current hold back, decide again for
        the new model and reserve its holds under a fresh id (ids are single-use)."""
        allowed = call.ctx.allowed_models
        if allowed is not None and not allowed(model_name):  # a key's allow-list binds too
            raise PermissionDenied(f"This key may not use model {model_name!r}.",
                                   param="model")
        model = self.catalog.get(model_name)
        if call.holds:
            await self.store.release(call.hold_id, now=self.clock())
            call.holds = ()
        call.notes.note_fallback(call.model.name, model_name, reason)
        call.model = model
        call.hold_id = new_call_id()
        decision = await self._decide(call, None)
        self._apply(call, decision)
        await self._reserve(call)

    async def trim_input(self, call: Call, target: int) -> bool:
        """Context-length recovery: drop the oldest turns down to about `target` input
        tokens. False when nothing could be dropped."""
        before = call.count.tokens
        plan = decide.Decision(decide.Action.TRIM, call.model.name, call.ctx.feature,
                               before, call.count.exact, trim_to=max(1, target))
        try:
            self._trim(call, plan)
        except decide.InputBudgetExceeded:
            return False
        call.count = await acount_request(call.ctx.protocol, call.ctx.route, call.body,
                                          call.model)
        if call.count.tokens >= before:
            return False
        call.trimmed_tokens += before - call.count.tokens
        return True

    async def _decide(self, call: Call, port: Port | None) -> decide.Decision:
        """Count and decide; summarise or trim once when the feature allows and the
        verdict asks."""
        decision = await self._count_and_decide(call)
        original = decision.input_tokens
        if decision.action is decide.Action.SUMMARIZE and await self._summarize(
                call, decision, port):
            decision = await self._count_and_decide(call)
            assert call.notes.summarized is not None
            call.notes.summarized["to"] = decision.input_tokens
            call.trimmed_tokens = original - decision.input_tokens
        if decision.action in (decide.Action.TRIM, decide.Action.SUMMARIZE):
            before = decision.input_tokens
            self._trim(call, decision)
            decision = await self._count_and_decide(call)
            call.trimmed_tokens = original - decision.input_tokens
            call.notes.trimmed = (before, decision.input_tokens)
        if decision.action is decide.Action.REJECT:
            assert decision.error is not None
            raise decision.error
        if decision.action is not decide.Action.ADMIT:
            raise decide.InputBudgetExceeded(
                f"Input of {decision.input_tokens} tokens still exceeds the budget of "
                f"feature {call.feature!r} after trimming.",
                param="messages",
                limit=decision.trim_to or 0,
                requested=decision.input_tokens,
            )
        return decision

    async def _count_and_decide(self, call: Call) -> decide.Decision:
        ctx = call.ctx
        call.count = await acount_request(ctx.protocol, ctx.route, call.body, call.model)
        facts = decide.RequestFacts(
            protocol=ctx.protocol,
            model=call.model.name,
            feature=ctx.feature,
            input=call.count,
            max_output=(None if ctx.route == "embeddings"
                        else call.adapter.requested_max_output(ctx.route, call.body)),
            n=_choices(call.body),
            step=ctx.step,
            attempt=ctx.step_attempt,
            identity=self._identity(ctx),
            output_floor=(None if ctx.route == "embeddings"
                          else call.adapter.output_floor(ctx.route, call.body)),
        )
        return decide.decide(facts, call.policy, call.model)

    def _trim(self, call: Call, decision: decide.Decision) -> None:
        key = call.adapter.messages_key(call.ctx.route)
        messages = call.body.get(key)
        if not isinstance(messages, list):
            raise decide.InputBudgetExceeded(
                f"Input of {decision.input_tokens} tokens is over the budget of feature "
                f"{call.feature!r} and has no turns to trim.",
                param=key,
                limit=decision.trim_to or 0,
                requested=decision.input_tokens,
            )
        fixed = decision.input_tokens - sum(message_tokens(m, call.model) for m in messages)
        result = trim_messages(
            messages,
            decision.trim_to or 0,
            lambda m: message_tokens(m, call.model),
            overhead=max(fixed, CHAT_REPLY_PRIMING),
        )
        call.body = {**call.body, key: list(result.messages)}
        call.notes.trimmed_turns = result.removed_count

    async def _summarize(self, call: Call, decision: decide.Decision,
                         port: Port | None) -> bool:
        """Replace the oldest turns by a summary; False (the caller trims) when there is
        no port to make the summary call through, nothing to replace, or it failed."""
        key = call.adapter.messages_key(call.ctx.route)
        messages = call.body.get(key)
        if port is None or call.feature.endswith(SUMMARIZE_SUFFIX):
            call.notes.summarize = "no summary call possible here: trimmed instead"
            return False
        if not isinstance(messages, list) or not decision.trim_to:
            return False
        cap = max(16, min(512, decision.trim_to // 4))
        fixed = decision.input_tokens - sum(message_tokens(m, call.model) for m in messages)
        try:
            kept = trim_messages(messages, decision.trim_to - cap - 16,
                                 lambda m: message_tokens(m, call.model),
                                 overhead=fixed).messages
        except decide.InputBudgetExceeded:
            return False
        kept_ids = {id(m) for m in kept}
        old = [m for m in messages if id(m) not in kept_ids]
        if not old:
            return False
        try:
            text = await self.summarizer.summarize(self, call, old, cap, port)
        except TallygateError as exc:
            call.notes.summarize = f"failed ({exc.code}): trimmed instead"
            return False
        note = call.adapter.summary_turn(SUMMARY_PREFIX + text)
        first = messages.index(old[0])
        rebuilt = [m for m in messages[:first] if id(m) in kept_ids] + [note]
        rebuilt += [m for m in messages[first:] if id(m) in kept_ids]
        call.body = {**call.body, key: rebuilt}
        call.notes.summarized = {"turns": len(old), "from": decision.input_tokens}
        return True

    def _identity(self, ctx: CallContext) -> Identity:
        limits = None
        if ctx.key_id is not None and ctx.key_limits:
            if ctx.key_id not in self._key_limits:
                self._key_limits[ctx.key_id] = key_rules(ctx.key_limits)
            limits = self._key_limits[ctx.key_id]
        return Identity(ctx.key_id, ctx.user, ctx.plan, ctx.run, limits, ctx.step)

    def _holds(self, call: Call, decision: decide.Decision) -> tuple[Hold, ...]:
        if call.ctx.route != "embeddings":
            return decision.holds
        # Embeddings produce no output tokens: hold the input alone.
        tokens = call.count.tokens
        amounts = Amounts(tokens, call.model.cost_nusd(Usage(input_tokens=tokens)))
        return holds_for(call.policy.limit_index, self._identity(call.ctx),
                         feature=call.ctx.feature, model=call.model.name, amounts=amounts)

    async def _reserve(self, call: Call) -> None:
        if not call.holds:
            return
        now = self.clock()
        if call.ctx.stream:  # stream headers go out before settling: read usage now
            denial, call.limit_usage = await self.store.reserve_and_read(
                call.hold_id, call.holds, lease=self.lease, now=now,
                read=tightest_holds(call.holds))
        else:
            denial = await self.store.reserve(call.hold_id, call.holds, lease=self.lease,
                                              now=now)
        if denial is not None:
            call.holds = ()  # nothing is held: never settle or release it
            raise decide.denial_to_error(
                denial, now, retry_within=call.policy.refusals.retry_within)

    # ------------------------------------------------------------------ sending

    async def send(self, call: Call, port: Port) -> Answer:
        """The upstream's answer, after retries, recovery and fallbacks."""
        return await recovery.deliver(self, call, port)

    async def settle(self, call: Call, answer: Answer) -> Answer:
        """Close a call with its answer (not an open stream): settle to the reported
        usage on success, give the hold back on failure; returns the answer the client
        gets (a 502 when the upstream's usage cannot be believed). A client that left
        meanwhile is recorded as 499: nobody received the answer, whatever it was; the
        tokens the upstream reported are still charged (it generated them)."""
        gone = call.ctx.client_gone
        if gone is not None and gone():
            usage = self._usage_of(call, answer)[0] if answer.ok else None
            if answer.ok:
                call.upstream_ms = _elapsed_ms(call.upstream_started)
            await self.fail(call, status=499, error_code="client_disconnected", usage=usage)
            return answer
        if answer.ok:
            call.upstream_ms = _elapsed_ms(call.upstream_started)
            usage, exact = self._usage_of(call, answer)
            if usage is None:  # the provider reported an impossible usage
                usage = call.held_usage()
                call.notes.usage = "the upstream reported an impossible usage: charged the hold"
                error = UpstreamInvalidUsage(
                    "The upstream reported an impossible token usage.", status=502)
                await self.complete(call, usage, exact=False, status=502,
                                    outcome=Outcome.ERROR, error_code=error.code)
                return Answer(502, error=error)
            await self.complete(call, usage, exact=exact)
            return answer
        status = answer.status
        if answer.error is not None:
            err = answer.error
            status = err.upstream_status if isinstance(err, UpstreamError) else err.status
        await self.fail(call, status=status, error_code=answer.error_code)
        return answer

    def _usage_of(self, call: Call, answer: Answer) -> tuple[Usage | None, bool]:
        """(usage, exact); usage None when the reported one is impossible. No usage
        reported at all: what was held, marked estimated."""
        usage = answer.usage
        if usage is None and answer.body:
            try:
                parsed = orjson.loads(answer.body)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                usage = call.adapter.usage_from_body(call.ctx.route, parsed)
        if usage is None:
            return call.held_usage(), False
        if not _sane(usage):
            return None, False
        return usage, True

    # ------------------------------------------------------------------ streams

    async def finish_stream(self, call: Call, *, ended: bool, disconnected: bool = False,
                            code: str = "upstream_stream_error",
                            cut: bool = False) -> CallRecord | None:
        """A relayed stream ended: read to its end (`ended`), ended by tallygate with a
        length stop because its hold could not grow (`cut`: an answered call, settled
        with what was relayed), cut by the client's disconnect, or broken (the upstream
        failed, or tallygate stopped it: `code`)."""
        if call.closed:
            return None
        call.upstream_ms = _elapsed_ms(call.upstream_started)
        usage = call.usage_so_far() or Usage(input_tokens=call.count.tokens)
        tap = call.tap
        exact = ended and tap is not None and tap.done and tap.usage is not None
        if not _sane(usage):
            usage, exact = call.held_usage(), False
            call.notes.usage = "the upstream reported an impossible usage: charged the hold"
        if ended:
            return await self.complete(call, usage, exact=exact)
        if cut:
            return await self.complete(call, usage, exact=False)
        if disconnected:
            return await self.fail(call, status=499, error_code="client_disconnected",
                                   usage=usage)
        return await self.fail(call, status=200, error_code=call.notes.stopped or code,
                               usage=usage)

    async def keep_up(self, call: Call) -> bool:
        """A streamed reservation as its stream grows: when the output nears the hold,
        grow the hold by a slice (one atomic store operation, every limit checked).
        False when it cannot grow: the front door cuts the stream there (tap.cut_stream)
        and finishes it with `finish_stream(cut=True)`. Cheap between checks: the bytes
        fed bound the tokens from above, so tokens are counted only near the hold."""
        tap = call.tap
        held = call.held_output
        if held is None or tap is None or tap.fed_bytes < call.next_check:
            return True
        used = tap.output_tokens_so_far()
        # Checked after every event: the margin covers what one event may carry.
        margin = min(call.stream_slice // 2, STREAM_MARGIN)
        if used < held - margin:
            call.next_check = tap.fed_bytes + (held - margin - used)
            return True
        cap = (call.max_output or 0) * _choices(call.body)
        more = min(call.stream_slice, cap - held)
        if more <= 0:
            call.held_output = None  # the whole cap is held: nothing left to grow
            return True
        grown = await self._extend(call, more)
        if grown:
            call.held_output = held + grown
            call.next_check = tap.fed_bytes + max(1, call.held_output - margin - used)
        return grown > 0

    async def _extend(self, call: Call, more: int) -> int:
        """Grow the hold by `more` output tokens, or by the room a refusal says is left
        (the last slice of a budget); the tokens added, 0 when none could be."""
        for _ in range(2):
            cost = decide.cost_upper_bound(call.model, 0, more)
            try:
                refused = await self.store.extend(call.hold_id, {"tokens": more, "cost": cost},
                                                  lease=self.lease, now=self.clock())
            except TallygateError as exc:  # the store is down: stop here, never overspend
                call.notes.stopped = f"budget ({exc.code})"
                return 0
            except Exception:  # a fault of ours: stop as a refusal would, blaming nobody
                log.exception("call %s: its hold could not grow", call.id)
                call.notes.stopped = "budget (internal_error)"
                return 0
            if refused is None:
                return more
            room = (refused.limit - refused.used) if isinstance(refused, Denial) else 0
            if isinstance(refused, Denial) and refused.metric is Metric.TOKENS \
                    and 0 < room < more:
                more = room  # the tokens left in the tightest limit: try those
                continue
            break
        call.notes.stopped = "budget"
        call.notes.limit = getattr(refused, "key", None)
        return 0

    # ------------------------------------------------------------------ closing

    async def complete(self, call: Call, usage: Usage, *, exact: bool = True,
                       status: int = 200, outcome: Outcome | None = None,
                       error_code: str | None = None) -> CallRecord:
        """Settle the reservation to the provider-reported usage and record the call."""
        call.closed = True
        self._open.discard(call)
        cost = call.model.cost_nusd(usage)
        result = await self._finish(call, {"tokens": usage.total_tokens, "cost": cost,
                                           "requests": 1})
        if result.overrun:
            call.notes.overrun = dict(result.overrun)
        if outcome is None:
            outcome = Outcome.TRIMMED if call.trimmed_tokens else Outcome.OK
        row = rows.finished(call, outcome, status, usage, cost, exact=exact, now=self.clock(),
                            error_code=error_code)
        self._record(row)
        return row

    async def fail(self, call: Call, *, status: int, error_code: str,
                   usage: Usage | None = None) -> CallRecord:
        """The call failed. Tokens generated before the failure are settled (they are
        billed); a call that produced none gives its whole reservation back."""
        call.closed = True
        self._open.discard(call)
        cost = 0
        actual = None  # nothing generated: the whole reservation goes back
        if usage is not None and usage.total_tokens > 0:
            cost = call.model.cost_nusd(usage)
            actual = {"tokens": usage.total_tokens, "cost": cost, "requests": 1}
        await self._finish(call, actual)
        row = rows.finished(call, Outcome.ERROR, status, usage or Usage(), cost, exact=True,
                            now=self.clock(), error_code=error_code)
        self._record(row)
        return row

    async def _finish(self, call: Call, actual: Mapping[str, int] | None) -> SettleResult:
        """Settle (actual) or release (None), reading the usage the headers show. A call
        no limit applies to held nothing: the store is not asked. A store that fails here
        costs the settlement (its lease frees the hold; a guarded store replays it),
        never the row."""
        if not call.holds:
            return SettleResult()
        try:
            result, call.limit_usage = await self.store.finish_and_read(
                call.hold_id, actual, now=self.clock(), read=tightest_holds(call.holds))
        except TallygateError as exc:
            log.warning("call %s: settling failed (%s); the hold expires with its lease",
                        call.id, exc.code)
            call.notes.usage = f"settlement failed ({exc.code})"
            return SettleResult()
        except Exception:  # a bug, not an outage: give the hold back rather than strand it
            log.exception("call %s: settling failed; its hold is released", call.id)
            call.notes.usage = "settlement failed (internal_error)"
            with contextlib.suppress(Exception):
                await self.store.release(call.hold_id, now=self.clock())
            return SettleResult()
        return result

    def record_refusal(self, ctx: CallContext, exc: TallygateError, *, started: float,
                       requested: str | None = None) -> CallRecord:
        """A request refused before it reached a provider (invalid, not allowed, over a
        limit) still gets its row, under the id its response carries."""
        row = rows.refused(ctx, exc, started=started, now=self.clock(), requested=requested)
        self._record(row)
        return row

    def record_cached(self, call: Call, saved: Usage) -> CallRecord:
        """A cache hit for a prepared (not reserved) call."""
        call.closed = True
        row = rows.cached(call, saved, now=self.clock())
        self._record(row)
        return row

    def _record(self, row: CallRecord) -> None:
        # The call is settled by now: a broken recorder must not cost the client its
        # answer (nor turn a refusal into a 500).
        try:
            self.recorder.record(row)
        except Exception:
            log.exception("call %s: its row could not be recorded", row.request_id)

    async def limit_usage(self, call: Call) -> list[LimitUsage]:
        """Usage of the tightest token and request limits that applied (the gateway's
        x-ratelimit-* headers): read with the settlement, else from the store now."""
        if call.limit_usage or not call.holds:
            return call.limit_usage
        now = self.clock()
        try:
            return list(await asyncio.gather(*(
                self.store.usage(h.key, limit=h.limit, window=h.window, rolling=h.rolling,
                                 now=now)
                for h in tightest_holds(call.holds))))
        except TallygateError:  # an unreadable store costs the headers, not the answer
            return []


def _as_json(payload: Any) -> bytes:
    """An SDK response object (the library's answer) as the JSON the provider sent."""
    dump = getattr(payload, "model_dump", None)
    return orjson.dumps(dump(mode="json")) if callable(dump) else b""


def _elapsed_ms(since: float | None) -> int | None:
    return None if since is None else int((time.perf_counter() - since) * 1000)


def _sane(usage: Usage) -> bool:
    return usage_is_sane(usage.input_tokens, usage.output_tokens, usage.cached_tokens,
                         usage.cache_write_tokens, usage.reasoning_tokens)


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) else 1


def tightest_holds(holds: Sequence[Hold]) -> list[Hold]:
    """The token hold and the request hold with the least headroom by limit."""
    best: dict[str, Hold] = {}
    for hold in holds:
        metric = hold.metric.value
        if metric == "cost" or hold.window is Window.RUN:  # (never resets: no header)
            continue
        current = best.get(metric)
        if current is None or hold.limit - hold.amount < current.limit - current.amount:
            best[metric] = hold
    return list(best.values())
