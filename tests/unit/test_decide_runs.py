"""The verdict for agent runs: lifetime budgets, the loop cap (from the attempt header
and from the store's count), name bounds, and what their refusals say."""

from __future__ import annotations

import math

import pytest

from tallygate.config import Policy
from tallygate.core.decide import (
    RequestFacts,
    check_attempt,
    decide,
    denial_to_error,
    ratelimit_headers,
)
from tallygate.core.limits import Identity
from tallygate.errors import BudgetExceeded, InvalidRequest, LoopLimit, RateLimited
from tallygate.gateway.errors import render_error
from tallygate.types import Count, Denial, LimitUsage, Metric, ModelInfo, Window

POLICY = Policy.from_mapping({"limits": {"run": {
    "tokens_per_run": 100_000, "requests_per_run": 50, "cost_usd_per_run": 2,
    "tokens_per_day": 60_000, "max_attempts_per_step": 3}}}, env={})
MODEL = ModelInfo("m", "openai", 200_000, 32_000, "o200k_base", 1_000_000_000, 4_000_000_000)
ALICE = Identity(key_id="k1", user="alice", run="ticket-42")
T0 = 1_718_000_000.0


def facts(identity: Identity = ALICE, *, step: str | None = "review",
          attempt: int | None = None) -> RequestFacts:
    return RequestFacts("openai", "m", None, Count(1000, True, "o200k_base"), max_output=500,
                        step=step, identity=identity, attempt=attempt)


def test_a_run_call_holds_its_lifetime_budget_and_its_step_attempt() -> None:
    got = {h.key: (h.amount, h.limit, h.window) for h in decide(facts(), POLICY, MODEL).holds}
    assert got["run:user.alice:ticket-42:tokens:run"] == (1500, 100_000, Window.RUN)
    assert got["run:user.alice:ticket-42:requests:run"] == (1, 50, Window.RUN)
    assert got["run:user.alice:ticket-42:cost:run"] == (3_000_000, 2 * 10**9, Window.RUN)
    assert got["run:user.alice:ticket-42:tokens:day"] == (1500, 60_000, Window.DAY)
    # The step comes from the facts when the identity has none (or from the identity).
    assert got["step:user.alice:ticket-42:review:requests:run"] == (1, 3, Window.RUN)
    own = Identity(key_id="k1", user="alice", run="ticket-42", step="plan")
    keys = {h.key for h in decide(facts(own, step=None), POLICY, MODEL).holds}
    assert "step:user.alice:ticket-42:plan:requests:run" in keys


@pytest.mark.parametrize("attempt", [None, 0, 1, 3])
def test_attempts_up_to_the_cap_pass(attempt: int | None) -> None:
    assert decide(facts(attempt=attempt), POLICY, MODEL).holds


def test_an_attempt_past_the_cap_is_refused_outright() -> None:
    with pytest.raises(LoopLimit) as caught:
        decide(facts(attempt=4), POLICY, MODEL)
    err = caught.value
    assert (err.status, err.code, err.openai_type, err.anthropic_type) == (
        429, "loop_limit", "requests", "rate_limit_error")
    assert "'review'" in err.message and "'ticket-42'" in err.message
    assert "at most 3 attempts" in err.message and "attempt 4" in err.message
    assert err.retry_after is None and err.details["should_retry"] is False
    assert (err.details["run"], err.details["step"], err.details["attempt"]) == (
        "ticket-42", "review", 4)
    # Without a run or step the header still says which loop it is.
    with pytest.raises(LoopLimit, match=r"Step '\(none\)' of run '\(none\)'"):
        check_attempt(Identity(), 9, 3)
    check_attempt(Identity(), 9, None)  # no cap configured: nothing to refuse


def test_the_stores_attempt_count_refusal_is_a_loop_limit() -> None:
    denial = Denial("step:user.alice:ticket-42:review:requests:run", 3, 3, 1, math.inf,
                    Window.RUN, Metric.REQUESTS)
    err = denial_to_error(denial, T0)
    assert isinstance(err, LoopLimit) and err.limit_key == denial.key
    assert err.message.startswith("Step 'review' of run 'ticket-42' of user 'alice' "
                                  "reached its loop limit: at most 3 attempts")
    assert "attempt 4" in err.message and err.details["attempt"] == 4


@pytest.mark.parametrize(("metric", "used", "requested", "text"), [
    (Metric.TOKENS, 99_000, 1_500, "99000 of 100000 used, this call needs up to 1500"),
    (Metric.COST, 1_999_000_000, 3_000_000, "$1.999 of $2 used"),
    (Metric.REQUESTS, 50, 1, "50 of 100000 used"),
])
def test_a_lifetime_refusal_never_resets(metric: Metric, used: int, requested: int,
                                         text: str) -> None:
    key = f"run:user.alice:ticket-42:{metric.value}:run"
    limit = 2 * 10**9 if metric is Metric.COST else 100_000
    denial = Denial(key, limit, used, requested, math.inf, Window.RUN, metric)
    err = denial_to_error(denial, T0)
    assert type(err) is BudgetExceeded and not isinstance(err, RateLimited)
    assert err.code == "budget_exceeded" and err.retry_after is None
    assert err.details["should_retry"] is False and err.details["reset_at"] is None
    assert f"lifetime {'cost' if metric is Metric.COST else metric.value[:-1]} limit of " \
        "run 'ticket-42' of user 'alice'" in err.message
    assert text in err.message and "it never resets: start a new run" in err.message
    _, _, headers = render_error(err, "openai", request_id="tg-x", now=T0)
    names = dict(headers)
    assert "retry-after" not in names and names["x-should-retry"] == "false"


def test_rate_limit_headers_leave_lifetime_budgets_out() -> None:
    usages = [LimitUsage("run:user.a:r:tokens:run", 1000, 990, 0, math.inf),
              LimitUsage("global:tokens:day", 10**6, 10, 0, T0 + 60)]
    headers = ratelimit_headers(usages, T0)
    assert headers["x-ratelimit-limit-tokens"] == "1000000"
    assert ratelimit_headers(usages[:1], T0) == {}


@pytest.mark.parametrize("identity", [
    Identity(run="r" * 257), Identity(run="bad\nrun"), Identity(run="r", step="s" * 257)])
def test_run_and_step_names_are_bounded(identity: Identity) -> None:
    with pytest.raises(InvalidRequest, match="at most 256 printable characters"):
        decide(facts(identity, step=None), POLICY, MODEL)
