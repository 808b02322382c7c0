"""The runaway-context guard: the size and growth rules, the bounded per-thread history,
and conversation keys."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tallygate.config import Policy
from tallygate.core.runaway import (
    InputHistory,
    RunawayPolicy,
    Verdict,
    conversation_key,
    judge,
)

GROWTH = RunawayPolicy(max_input_growth=Decimal("1.5"), growth_calls=4)


def test_size_rule_is_exact_at_the_boundary() -> None:
    policy = RunawayPolicy(max_input_per_call=100_000)
    assert judge((), 100_000, policy).verdict is Verdict.OK
    hit = judge((), 100_001, policy)
    assert (hit.verdict, hit.rule, hit.limit) == (Verdict.ALERT, "size", 100_000)
    refuse = RunawayPolicy(max_input_per_call=100_000, refuse=True)
    assert judge((), 100_001, refuse).verdict is Verdict.REFUSE


def test_growth_rule_needs_steady_growth_past_the_factor() -> None:
    # seed 002: every call carries more history than the last, doubling.
    hit = judge((10_000, 20_000, 40_000), 80_000, GROWTH)
    assert (hit.verdict, hit.rule, hit.growth) == (Verdict.ALERT, "growth", Decimal("8.000"))
    assert hit.recent == (10_000, 20_000, 40_000, 80_000)
    assert hit.figures()["growth"] == "8.000" and hit.figures()["limit"] == "1.5"
    # A coding agent creeping up ~10% a turn: 1.33× over 4 calls.
    assert judge((20_000, 22_000, 24_200), 26_620, GROWTH).verdict is Verdict.OK
    # Exactly the factor is not past it; one call that shrank (a compaction) resets it.
    assert judge((10_000, 11_000, 12_000), 15_000, GROWTH).verdict is Verdict.OK
    assert judge((10_000, 30_000, 20_000), 80_000, GROWTH).verdict is Verdict.OK
    assert judge((20_000, 40_000), 80_000, GROWTH).verdict is Verdict.OK  # too few calls
    # Only the last growth_calls - 1 earlier calls count.
    assert judge((90_000, 10_000, 20_000, 40_000), 80_000, GROWTH).verdict is Verdict.ALERT
    assert judge((0, 20_000, 40_000), 80_000, GROWTH).verdict is Verdict.OK


def test_history_is_per_thread_bounded_and_skips_refused_calls() -> None:
    history = InputHistory(RunawayPolicy(max_input_growth=Decimal(2), growth_calls=3,
                                         refuse=True), max_threads=2)
    assert history.check("a", 100).verdict is Verdict.OK
    assert history.check("b", 100).verdict is Verdict.OK
    assert history.check("a", 200).verdict is Verdict.OK
    refused = history.check("a", 500)
    assert refused.verdict is Verdict.REFUSE and refused.recent == (100, 200, 500)
    assert history.check("a", 190).verdict is Verdict.OK  # 500 was never sent
    assert history.check("a", 390).verdict is Verdict.OK  # 200, 190, 390: no steady growth
    history.check("c", 1)  # a third thread: the least recently used (b) goes
    assert len(history) == 2
    assert history.check("b", 1_000).verdict is Verdict.OK  # b starts over


def test_policy_from_the_config() -> None:
    run = Policy.from_mapping({"limits": {"run": {
        "max_input_per_call": 150_000, "max_input_growth": "1.5", "growth_calls": 5,
        "on_runaway": "refuse"}}}, env={}).limits.run
    assert run.runaway == RunawayPolicy(150_000, Decimal("1.5"), 5, True)
    assert Policy.from_mapping({}, env={}).limits.run.runaway is None
    with pytest.raises(ValueError, match="growth_calls"):
        RunawayPolicy(growth_calls=1)


def test_conversation_keys_follow_the_opening_and_the_owner() -> None:
    opening = [{"role": "system", "content": "You review code."},
               {"role": "user", "content": "Review this diff"}]
    key = conversation_key("user.alice", opening)
    assert key.startswith("conversation:user.alice:")
    assert key == conversation_key("user.alice", [dict(reversed(m.items())) for m in opening])
    assert key != conversation_key("user.bob", opening)
    assert key != conversation_key("user.alice", opening[:1])


def test_a_refusal_says_which_rule_and_the_figures() -> None:
    size = judge((), 600_000, RunawayPolicy(max_input_per_call=500_000, refuse=True))
    err = size.error("ticket-42")
    assert (err.status, err.code, err.limit, err.requested) == (
        400, "runaway_context", 500_000, 600_000)
    assert "run 'ticket-42'" in err.message and "max_input_per_call (500000)" in err.message
    growth = judge((10, 20, 40), 80, RunawayPolicy(max_input_growth=Decimal("1.5"),
                                                   refuse=True))
    err = growth.error(None)
    assert "this conversation" in err.message and "10, 20, 40, 80 tokens: 8.000×" in err.message
    assert err.details["rule"] == "growth" and err.details["recent_inputs"] == [10, 20, 40, 80]
