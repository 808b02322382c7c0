"""One call's life through the engine: admit, send, settle, record — and the policy's
changes on the way (clamp, routing, trim, summarise, fallback, recovery)."""

from __future__ import annotations

import orjson
import pytest

from tallygate.engine import Answer
from tallygate.errors import BudgetExceeded, FeatureDisabled, InputBudgetExceeded
from tallygate.types import Outcome
from tests.engine.conftest import HI, Rig, body, fault, reply, timeout


def detail(row) -> dict:  # type: ignore[no-untyped-def]
    return orjson.loads(row.detail) if row.detail else {}


async def test_a_call_is_admitted_sent_settled_and_recorded(rig: Rig) -> None:
    rig.port.then = reply(12, 7)
    call, answer = await rig.engine.run(rig.ctx(), body(), rig.port)
    assert answer.ok and call.closed
    [row] = rig.rows
    assert row.request_id == call.id and call.id.startswith("tg-") and len(call.id) == 35
    assert (row.outcome, row.status, row.input_tokens, row.output_tokens) == (
        Outcome.OK, 200, 12, 7)
    assert row.exact and row.user == "u1" and row.feature == "chat"
    assert await rig.used() == (19, 0)  # settled to the reported usage, nothing held
    assert rig.port.sent[0]["max_output"] == 50  # the feature's cap, set when absent
    assert detail(row)["clamp"] == {"to": 50, "reason": "feature_cap", "requested": None}
    assert detail(row)["v"] == 1


async def test_a_refusal_is_recorded_under_the_calls_own_id(rig: Rig) -> None:
    ctx = rig.ctx(user="poor")
    rig.port.then = reply(250, 40)
    await rig.engine.run(rig.ctx(user="poor"), body(), rig.port)
    with pytest.raises(BudgetExceeded):
        await rig.engine.run(ctx, body(), rig.port)
    refused = rig.rows[-1]
    assert refused.request_id == ctx.call_id and refused.outcome is Outcome.REJECTED
    assert refused.status == 429 and refused.error_code == "budget_exceeded"
    assert detail(refused)["limit"] == "user:poor:tokens:day"
    assert len(rig.port.sent) == 1  # the refused call never reached the provider


async def test_a_switched_off_feature_is_refused_with_a_row(rig: Rig) -> None:
    await rig.store.set_flag("chat", False)
    ctx = rig.ctx()
    with pytest.raises(FeatureDisabled):
        await rig.engine.run(ctx, body(), rig.port)
    assert rig.rows[-1].request_id == ctx.call_id and rig.rows[-1].status == 403


async def test_no_usage_reported_charges_the_hold_as_an_estimate(rig: Rig) -> None:
    from tallygate.engine import Answer

    rig.port.then = Answer(200, b'{"choices": []}')
    call, _ = await rig.engine.run(rig.ctx(), body(), rig.port)
    [row] = rig.rows
    assert not row.exact and row.output_tokens == 50 and row.input_tokens == call.count.tokens
    assert await rig.used() == (call.count.tokens + 50, 0)


async def test_an_impossible_usage_is_a_502_charged_the_hold(rig: Rig) -> None:
    rig.port.then = reply(2**63, 5)
    call, answer = await rig.engine.run(rig.ctx(), body(), rig.port)
    assert answer.status == 502 and answer.error is not None
    assert answer.error.code == "upstream_invalid_usage"
    [row] = rig.rows
    assert (row.status, row.outcome, row.exact) == (502, Outcome.ERROR, False)
    assert await rig.used() == (call.count.tokens + 50, 0)  # the hold, then nothing held


async def test_trim_keeps_the_newest_turns(rig: Rig) -> None:
    turns = [{"role": "user", "content": f"turn {i} " + "word " * 8} for i in range(8)]
    _, answer = await rig.engine.run(rig.ctx("trimmed"), body(turns), rig.port)
    assert answer.ok
    sent = rig.port.sent[0]["body"]["messages"]
    assert sent[-1] == turns[-1] and len(sent) < len(turns)
    [row] = rig.rows
    assert row.outcome is Outcome.TRIMMED and row.trimmed_tokens > 0
    assert detail(row)["trimmed"]["to"] <= 40


async def test_summarize_is_a_sub_call_through_the_same_port(rig: Rig) -> None:
    turns = [{"role": "user", "content": f"turn {i} " + "word " * 8} for i in range(8)]
    rig.port.script = [reply(30, 6, text="They talked about words.")]
    _, answer = await rig.engine.run(rig.ctx("summed"), body(turns), rig.port)
    assert answer.ok
    summary_row, main_row = rig.rows
    assert summary_row.feature == "summed:summarize" and summary_row.outcome is Outcome.OK
    assert summary_row.request_id != main_row.request_id  # its own id, its own hold
    sent = rig.port.sent[1]["body"]["messages"]
    assert any("They talked about words." in str(m.get("content")) for m in sent)
    assert detail(main_row)["summarized"]["turns"] >= 1
    assert await rig.nothing_held()


async def test_summarize_failing_falls_back_to_trim(rig: Rig) -> None:
    turns = [{"role": "user", "content": f"turn {i} " + "word " * 8} for i in range(8)]
    rig.port.script = [fault(500, retryable=False)]
    _, answer = await rig.engine.run(rig.ctx("summed"), body(turns), rig.port)
    assert answer.ok
    assert "trimmed instead" in detail(rig.rows[-1])["summarize"]


async def test_input_over_max_input_with_reject_is_refused(rig: Rig) -> None:
    with pytest.raises(InputBudgetExceeded):
        await rig.engine.run(rig.ctx("strict"), body([{"role": "user", "content": "w " * 90}]),
                             rig.port)
    assert rig.rows[-1].status == 400 and not rig.port.sent


async def test_transient_faults_are_retried_and_noted(rig: Rig) -> None:
    rig.port.script = [fault(429, retry_after=0.0), timeout()]
    _, answer = await rig.engine.run(rig.ctx(), body(), rig.port)
    assert answer.ok
    [row] = rig.rows
    assert row.retries == 2
    assert [a["status"] for a in detail(row)["attempts"]] == [429, 504]
    assert detail(row)["attempts"][1]["timeout"] is True


async def test_the_client_retrying_means_no_retry_inside(rig: Rig) -> None:
    rig.port.script = [fault(500)]
    _, answer = await rig.engine.run(rig.ctx(client_retries=1), body(), rig.port)
    assert answer.status == 500
    [row] = rig.rows
    assert row.retries == 0 and detail(row)["client_retrying"] is True
    assert await rig.nothing_held()


async def test_context_length_halves_then_trims(rig: Rig) -> None:
    turns = [{"role": "user", "content": f"turn {i} " + "word " * 3} for i in range(6)]
    ctx_err = fault(400, code="context_length_exceeded", context_length=True)
    rig.port.script = [ctx_err, ctx_err]
    _, answer = await rig.engine.run(rig.ctx("trimmed"), body(turns), rig.port)
    assert answer.ok
    caps = [s["max_output"] for s in rig.port.sent]
    assert caps == [20, 10, 10]
    info = detail(rig.rows[-1])
    assert info["halved"] == [{"from": 20, "to": 10}] and info["trimmed_on_retry"]


async def test_an_upstream_fault_falls_back_to_the_next_model(rig: Rig) -> None:
    rig.port.script = [fault(500), fault(500), fault(500)]
    call, answer = await rig.engine.run(rig.ctx("backup"), body(), rig.port)
    assert answer.ok and call.model.name == "gpt-4o"
    [row] = rig.rows
    assert row.model_used == "gpt-4o" and row.retries == 3
    assert detail(row)["fallback"] == [{"from": "gpt-4o-mini", "to": "gpt-4o",
                                        "reason": "upstream 500"}]
    assert await rig.nothing_held()


async def test_on_limit_fallback_moves_to_a_model_with_room(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(limits={"model": {"gpt-4o-mini": {"tokens_per_day": 10}}})
    call, answer = await rig.engine.run(rig.ctx("backup"), body(), rig.port)
    assert answer.ok and call.model.name == "gpt-4o"
    assert detail(rig.rows[-1])["fallback"][0]["reason"] == "budget_exceeded"


async def test_a_model_the_key_may_not_use_is_refused(rig: Rig) -> None:
    from tallygate.errors import PermissionDenied

    ctx = rig.ctx(allowed_models=lambda name: name == "gpt-4o")
    with pytest.raises(PermissionDenied):
        await rig.engine.run(ctx, body(), rig.port)
    assert rig.rows[-1].status == 403 and not rig.port.sent


async def test_routing_by_step_is_noted(rig: Rig) -> None:
    _, answer = await rig.engine.run(rig.ctx(step="verification"),
                                     body(HI, model="auto"), rig.port)
    assert answer.ok
    assert detail(rig.rows[-1])["routed"] == {"from": "auto", "to": "gpt-4o-mini"}


async def test_a_reload_leaves_calls_in_flight_on_their_policy(rig: Rig) -> None:
    from tallygate.config import Policy
    from tallygate.core.catalog import Catalog
    from tests.engine.conftest import BASE_POLICY

    rig.port.then = Answer(200, stream=object())
    call, _ = await rig.engine.start(rig.ctx(stream=True), body(stream=True), rig.port)
    assert call.max_output == 50
    smaller = {**BASE_POLICY, "features": {**BASE_POLICY["features"],
                                           "chat": {"max_output": 7, "model": "gpt-4o-mini"}}}
    new = Policy.from_mapping(smaller, env={})
    rig.engine.reload(new, Catalog(new.models))
    assert call.policy is not new and call.max_output == 50  # in flight: as it started
    await rig.engine.finish_stream(call, ended=False, disconnected=True)
    await rig.engine.run(rig.ctx(), body(), rig.port)
    assert rig.port.sent[-1]["max_output"] == 7  # the next call: the new policy
    assert await rig.nothing_held()
