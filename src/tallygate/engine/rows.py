"""The ledger rows of calls: one builder for every way a call ends (answered, failed,
refused before it was admitted, served from the cache)."""

from __future__ import annotations

from typing import Any

import orjson

from tallygate.config import DEFAULT_FEATURE
from tallygate.engine.call import DETAIL_VERSION, Call, CallContext
from tallygate.errors import LimitError, TallygateError
from tallygate.types import CallRecord, Outcome, Usage


def _detail(notes: dict[str, Any] | None) -> str | None:
    return orjson.dumps(notes).decode() if notes else None


def finished(call: Call, outcome: Outcome, status: int, usage: Usage, cost: int, *,
             exact: bool, now: float, error_code: str | None = None) -> CallRecord:
    """The row of an admitted call."""
    ctx = call.ctx
    return CallRecord(
        request_id=ctx.call_id,
        ts=call.started,
        outcome=outcome,
        status=status,
        client_request_id=ctx.client_request_id,
        key_id=ctx.key_id,
        user=ctx.user,
        plan=ctx.plan,
        feature=call.feature,
        run=ctx.run,
        step=ctx.step,
        step_attempt=ctx.step_attempt,
        provider=call.model.provider,
        model_requested=call.requested_model,
        model_used=call.model.name,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        exact=exact,
        cost_nusd=cost,
        latency_ms=int((now - call.started) * 1000),
        ttft_ms=call.ttft_ms(),
        upstream_ms=call.upstream_ms,
        retries=call.retries,
        error_code=error_code,
        trimmed_tokens=call.trimmed_tokens,
        stream=ctx.stream,
        detail=_detail(call.notes.detail()),
    )


def cached(call: Call, saved: Usage, *, now: float) -> CallRecord:
    """A cache hit: nothing reserved or charged; the tokens it saved are recorded."""
    row = finished(call, Outcome.CACHED, 200, Usage(), 0, exact=True, now=now)
    row.tokens_saved = saved.total_tokens
    return row


def refused(ctx: CallContext, exc: TallygateError, *, started: float, now: float,
            requested: str | None) -> CallRecord:
    """A call refused before it reached a provider: invalid, not allowed, over a limit."""
    notes: dict[str, Any] = {"message": exc.message, "v": DETAIL_VERSION}
    if isinstance(exc, LimitError) and exc.limit_key:
        notes["limit"] = exc.limit_key
    if exc.details.get("conversation"):  # a runaway refusal of a run-less call
        notes["conversation"] = exc.details["conversation"]
    return CallRecord(
        request_id=ctx.call_id,
        ts=started,
        outcome=Outcome.REJECTED,
        status=exc.status,
        client_request_id=ctx.client_request_id,
        key_id=ctx.key_id,
        user=ctx.user,
        plan=ctx.plan,
        feature=ctx.feature or DEFAULT_FEATURE,
        run=ctx.run,
        step=ctx.step,
        step_attempt=ctx.step_attempt,
        model_requested=requested,
        latency_ms=int((now - started) * 1000),
        error_code=exc.code,
        stream=ctx.stream,
        detail=_detail(notes),
    )
