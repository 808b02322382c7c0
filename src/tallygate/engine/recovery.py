"""One recovery policy for every way a call can fail to get an answer, whichever front
door sent it:

  * a transient upstream fault (429, 5xx, timeout): retry with full-jitter back-off,
    honouring retry-after, within the feature's `retries` and the client's deadline
    (engine/retry.py);
  * a context-length error: halve the output cap, then trim the input to ¾ when the
    feature's `on_exceed` allows trimming;
  * still failing, or a limit with no room (`on_limit: fallback`): the feature's
    fallback models that speak the call's protocol, each reserved afresh.

Each step is noted on the call (`CallNotes`) and counted in `call.retries`. Everything
here happens before the first byte goes to the client: a stream is handed back as soon
as the upstream answers 200 and is never retried after that."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tallygate.engine.ports import Answer, Port
from tallygate.engine.retry import RetryPlan
from tallygate.errors import TallygateError

if TYPE_CHECKING:
    from tallygate.engine.call import Call
    from tallygate.engine.owner import CallOwner

RECOVERY_STEPS = 2  # halve the output cap, then trim the input


async def deliver(engine: CallOwner, call: Call, port: Port) -> Answer:
    """The call's answer after retries, recovery and fallbacks."""
    feature = call.policy.feature(call.ctx.feature)
    plan = RetryPlan.for_call(engine.retry, feature_retries=feature.retries,
                              client_retries=call.ctx.client_retries,
                              client_timeout=call.ctx.client_timeout,
                              provider_timeout=port.provider_timeout(call))
    if plan.max_retries < feature.retries:
        call.notes.client_retrying = True
    answer = await _on_model(engine, call, port, plan)
    if answer.ok or not answer.worth_a_fallback:
        return answer
    reason = answer.fault.code if answer.fault and answer.fault.code else (
        f"upstream {answer.status}")
    while await fall_back(engine, call, reason or "upstream"):
        call.retries += 1
        answer = await _on_model(engine, call, port, plan)
        if answer.ok or not answer.worth_a_fallback:
            break
    return answer


async def fall_back(engine: CallOwner, call: Call, reason: str) -> bool:
    """Move the call to the next fallback model whose limits have room. False when no
    fallback is left (each refusal is noted)."""
    tried = {move["to"] for move in call.notes.fallback or ()}
    for name in engine.fallback_models(call):
        if name in tried:
            continue
        try:
            await engine.move_to(call, name, reason=reason)
            return True
        except TallygateError as exc:
            call.notes.note_refused(name, exc.code)
            tried.add(name)
    return False


async def _on_model(engine: CallOwner, call: Call, port: Port, plan: RetryPlan) -> Answer:
    """One model: retry transient faults, recover from context-length errors."""
    recovered = 0
    while True:
        left = min(port.provider_timeout(call), plan.remaining_time())
        call.upstream_started = time.perf_counter()
        answer = await port.send(call, timeout=max(left, 0.001))
        fault = answer.fault
        if answer.ok or fault is None:
            return answer
        _note(call, answer)
        if fault.context_length:
            if recovered >= RECOVERY_STEPS or not await _recover(engine, call, recovered):
                return answer
            recovered += 1
            call.retries += 1
            continue
        delay = plan.next_delay(fault.retry_after) if fault.retryable else None
        if delay is None:
            return answer
        await plan.wait(delay)
        call.retries += 1


async def _recover(engine: CallOwner, call: Call, step: int) -> bool:
    """Step 0 halves the output cap; step 1 trims the input to ¾ when the feature's
    on_exceed allows trimming (trim or summarize)."""
    if step == 0 and call.max_output and call.max_output > 1:
        halved = call.max_output // 2
        call.notes.note_halved(call.max_output, halved)
        call.max_output = halved
        return True
    if call.policy.feature(call.ctx.feature).on_exceed == "reject":
        call.notes.recovery = "input not trimmed: the feature's on_exceed is reject"
        return False
    before = call.count.tokens
    if not await engine.trim_input(call, before * 3 // 4):
        return False
    call.notes.note_trim_on_retry(before, call.count.tokens)
    return True


def _note(call: Call, answer: Answer) -> None:
    """One line per failed try: which model, what the upstream said."""
    fault = answer.fault
    entry: dict[str, Any] = {"model": call.model.name, "status": answer.status}
    if fault is not None and fault.code:
        entry["code"] = fault.code
    if answer.error is not None and answer.error.details.get("timeout"):
        entry["timeout"] = True
    if fault is not None and fault.retry_after is not None:
        entry["retry_after"] = fault.retry_after
    call.notes.note_attempt(entry)
