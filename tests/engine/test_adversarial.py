"""A caller trying to bend the budget: concurrent calls racing for the last tokens,
predicted and forged ids, values past every bound, switching attribution between calls.
The invariant: provider-truth tokens never exceed the limit, one row per admitted call,
ledger tokens == provider truth, nothing left held."""

from __future__ import annotations

import asyncio
import itertools
import random

import orjson
import pytest

from tallygate.engine import bounds, new_call_id
from tallygate.errors import BudgetExceeded, InvalidRequest
from tallygate.types import Outcome
from tests.engine.conftest import Rig, body, growing_turns, reply


def provider_truth(rig: Rig) -> int:
    """Tokens the (fake) provider reported for the calls it served."""
    return sum(r.input_tokens + r.output_tokens for r in rig.rows if r.outcome is Outcome.OK)


async def test_concurrent_calls_never_pass_the_plan(rig: Rig) -> None:
    rng = random.Random(7)

    async def answer_later(call):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return reply(call.count.tokens, rng.randint(1, call.max_output or 1))

    class Port:
        async def send(self, call, *, timeout):  # type: ignore[no-untyped-def]
            return await answer_later(call)

        def provider_timeout(self, call):  # type: ignore[no-untyped-def]
            return 30.0

    port = Port()
    results = await asyncio.gather(
        *(rig.engine.run(rig.ctx(), body(), port) for _ in range(20)), return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(admitted) + len(refused) == 20 and refused
    ok_rows = [r for r in rig.rows if r.outcome is Outcome.OK]
    assert len(ok_rows) == len(admitted)  # one row per admitted call
    assert len({r.request_id for r in rig.rows}) == 20  # and one per refusal, all distinct
    assert provider_truth(rig) <= 300
    used, reserved = await rig.used()
    assert (used, reserved) == (provider_truth(rig), 0)


async def test_a_client_request_id_is_never_a_key(rig: Rig) -> None:
    """20 calls sharing one client id each hold, settle and record on their own: keyed
    on the client's id, the second call's reserve would collide with the first's."""
    results = await asyncio.gather(
        *(rig.engine.run(rig.ctx(client_request_id="same-1"), body(), rig.port)
          for _ in range(20)), return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, BudgetExceeded) for r in refused), refused[:1]
    # As many as fit: 15 tokens each against 300, held at input + max_output.
    assert len(admitted) == len(rig.port.sent) >= 300 // (15 + 50)
    ok_rows = [r for r in rig.rows if r.outcome is Outcome.OK]
    assert len(ok_rows) == len(admitted)
    assert len({r.request_id for r in rig.rows}) == len(rig.rows) == 20
    assert all(r.client_request_id == "same-1" and r.request_id != "same-1"
               for r in rig.rows)
    assert {call.id for call, _ in admitted} == {r.request_id for r in ok_rows}
    assert provider_truth(rig) <= 300
    assert await rig.used() == (provider_truth(rig), 0)


def test_ids_are_random_not_a_counter() -> None:
    ids = [new_call_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    values = [int(i[3:], 16) for i in ids]
    # A counter would give small steps; random ids differ in about half their 128 bits.
    steps = [bin(a ^ b).count("1") for a, b in itertools.pairwise(values)]
    assert min(steps) > 30


async def test_switching_attribution_between_calls_charges_each_its_own(rig: Rig) -> None:
    for user in ("a", "b", "a", "c"):
        await rig.engine.run(rig.ctx(user=user), body(), rig.port)
    assert [r.user for r in rig.rows] == ["a", "b", "a", "c"]
    assert (await rig.used("a"))[0] == 30 and (await rig.used("b"))[0] == 15


@pytest.mark.parametrize("value", ["10000000000000000000", "100000000000000000000", "-1",
                                   "1e3", "١", " ", "1000001"])
def test_attempt_out_of_range_is_a_4xx(value: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        bounds.attempt(value)
    assert err.value.status == 400 and err.value.param == "X-Tallygate-Attempt"


def test_attempts_in_range_pass() -> None:
    assert bounds.attempt("0") == 0 and bounds.attempt(" 42 ") == 42
    assert bounds.attempt(None) is None and bounds.attempt(bounds.MAX_ATTEMPT) == 1_000_000


@pytest.mark.parametrize("value", ["x" * 257, "", "tab\there", "nl\nx"])
def test_names_past_their_bounds_are_refused(value: str) -> None:
    with pytest.raises(InvalidRequest):
        bounds.name(value, "X-Tallygate-Run")


@pytest.mark.parametrize("value", ["a b", "é", "x" * 129, ""])
def test_client_ids_past_their_bounds_are_refused(value: str) -> None:
    with pytest.raises(InvalidRequest):
        bounds.client_id(value)


def _nested(depth: int) -> dict:  # type: ignore[type-arg]
    node: dict = {"type": "string"}  # type: ignore[type-arg]
    for _ in range(depth):
        node = {"type": "object", "properties": {"x": node}}
    return node


def test_deep_nesting_anywhere_is_refused_before_anything_serialises_it() -> None:
    deep = body(tools=[{"type": "function",
                        "function": {"name": "f", "parameters": _nested(150)}}])
    with pytest.raises(InvalidRequest):
        bounds.check_depth(deep)
    bounds.check_depth(body(tools=[{"type": "function",
                                    "function": {"name": "f", "parameters": _nested(10)}}]))
    with pytest.raises(InvalidRequest):
        bounds.check_depth({"extra": _list(300)})


def _list(depth: int) -> list:  # type: ignore[type-arg]
    node: list = []  # type: ignore[type-arg]
    for _ in range(depth):
        node = [node]
    return node


async def test_an_absurd_usage_never_reaches_the_counters(rig: Rig) -> None:
    rig.port.then = reply(5, 10**13)
    call, answer = await rig.engine.run(rig.ctx(), body(), rig.port)
    assert answer.status == 502
    used, reserved = await rig.used()
    assert reserved == 0 and used == call.count.tokens + 50


async def test_invented_feature_names_share_the_default_budget(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(limits={"feature": {"default": {"tokens_per_day": 200}}},
                   plans={"free": {"tokens_per_day": 100_000}})
    admitted = 0
    for i in range(12):
        try:
            await rig.engine.run(rig.ctx(f"invented-{i}"), body(), rig.port)
            admitted += 1
        except BudgetExceeded:
            pass
    assert 0 < admitted < 12  # one shared counter, not 12 copies of the default budget
    served = [r for r in rig.rows if r.outcome is Outcome.OK]
    assert {r.feature for r in rig.rows} == {"default"}
    assert sum(r.input_tokens + r.output_tokens for r in served) <= 200
    assert orjson.loads(served[0].detail)["unknown_feature"] == "invented-0"


async def test_the_default_kill_switch_stops_invented_names(rig: Rig) -> None:
    from tallygate.errors import FeatureDisabled

    await rig.store.set_flag("default", False)
    with pytest.raises(FeatureDisabled):
        await rig.engine.run(rig.ctx("made-up"), body(), rig.port)


async def test_unknown_features_reject_says_did_you_mean(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(unknown_features="reject")
    with pytest.raises(InvalidRequest, match="chat") as err:
        await rig.engine.run(rig.ctx("chatt"), body(), rig.port)
    assert err.value.param == "X-Tallygate-Feature"
    assert rig.rows[-1].status == 400


async def test_a_run_whose_context_keeps_growing_is_refused(make_rig) -> None:  # type: ignore[no-untyped-def]
    """Seed 002's weekend: every call re-sends more history than the last."""
    from tallygate.errors import RunawayContext

    rig = make_rig(limits={"run": {"max_input_growth": 1.5, "growth_calls": 3,
                                   "on_runaway": "refuse"}},
                   plans={"free": {"tokens_per_day": 10**7}})
    history: list[dict[str, str]] = []
    sent = 0
    with pytest.raises(RunawayContext):
        for _ in range(10):
            history += [{"role": "user", "content": "more context " * (10 + 4 * len(history))}]
            await rig.engine.run(rig.ctx(run="loop-1"), body(list(history)), rig.port)
            sent += 1
    assert 2 <= sent < 10  # stopped once the growth passed 1.5x over 3 calls
    assert rig.rows[-1].error_code == "runaway_context" and rig.rows[-1].status == 400
    # Another run of the same user is its own thread.
    await rig.engine.run(rig.ctx(run="fresh"), body(), rig.port)


GROWING = {"run": {"max_input_growth": 1.5, "growth_calls": 3}}


async def test_a_conversation_without_a_run_whose_context_keeps_growing_is_refused(
        make_rig) -> None:  # type: ignore[no-untyped-def]
    """No X-Tallygate-Run: the guard judges the conversation (its owner and opening)."""
    from tallygate.core.runaway import conversation_key
    from tallygate.errors import RunawayContext

    rig = make_rig(limits={"run": {**GROWING["run"], "on_runaway": "refuse"}},
                   plans={"free": {"tokens_per_day": 10**7}})
    rig.port.then = lambda call: reply(call.count.tokens, 5)
    sent = 0
    with pytest.raises(RunawayContext) as refused:
        for n in range(1, 8):
            await rig.engine.run(rig.ctx(), body(growing_turns(n)), rig.port)
            sent += 1
    assert sent == 2  # the third call grew past 1.5x over 3 calls
    assert "this conversation" in refused.value.message
    key = conversation_key("user.u1", growing_turns(1)[:2])
    assert [orjson.loads(r.detail or "{}").get("conversation") for r in rig.rows] == [key] * 3
    assert rig.rows[-1].error_code == "runaway_context" and rig.rows[-1].status == 400
    # Another conversation of the same user, and the same one of another user: their own.
    await rig.engine.run(rig.ctx(), body(growing_turns(3, "Another task.")), rig.port)
    await rig.engine.run(rig.ctx(user="u2", key_id="k2"), body(growing_turns(3)), rig.port)
    assert [r.outcome for r in rig.rows[-2:]] == [Outcome.OK, Outcome.OK]


async def test_without_a_guard_rows_carry_no_conversation(rig: Rig) -> None:
    await rig.engine.run(rig.ctx(), body(growing_turns(1)), rig.port)
    assert rig.rows[-1].detail is None or "conversation" not in rig.rows[-1].detail
