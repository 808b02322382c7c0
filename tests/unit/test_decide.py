"""The verdict: routing, output clamps (with n and the context window), exact input
boundaries, holds, denial → error mapping, and the rate-limit headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallygate.config import Policy
from tallygate.core.decide import (
    Action,
    ClampReason,
    RequestFacts,
    cost_upper_bound,
    decide,
    denial_to_error,
    go_duration,
    ratelimit_headers,
    resolve_model,
)
from tallygate.core.limits import Identity
from tallygate.errors import (
    BudgetExceeded,
    InputBudgetExceeded,
    InvalidRequest,
    RateLimited,
    UnknownModel,
)
from tallygate.types import Count, Denial, LimitUsage, Metric, ModelInfo, Usage, Window
from tests.support.policies import SPEC_CHAT, SPEC_TIERS

POLICY = Policy.from_mapping(
    {
        "tiers": SPEC_TIERS,
        "features": {
            "chat": SPEC_CHAT,
            "summarize": {"max_input": 16000, "max_output": 500, "model": "tier:small"},
            "sum2": {"max_input": 100, "on_exceed": "summarize"},
            "free": {},
        },
        "plans": {"free": {"tokens_per_day": 10000}},
        "limits": {"global": {"tokens_per_minute": 1_000_000}, "run": {"cost_usd_per_day": 1}},
        "routing": {
            "steps": {
                "planning": "large",
                "review": "medium",
                "direct": "gpt-4.1",
                "tiered": "tier:small",
            }
        },
    },
    env={},
)
# $2.50 / $10 per million tokens, in nano-USD per million
GPT4O = ModelInfo("gpt-4o", "openai", 128_000, 16_384, "o200k_base", 2_500_000_000, 10_000_000_000)
TINY = ModelInfo("tiny", "local", 1000, 800, "cl100k_base", 0, 0)


def facts(
    tokens: int,
    *,
    feature: str | None = "chat",
    max_output: int | None = None,
    n: int = 1,
    exact: bool = True,
    identity: Identity | None = None,
) -> RequestFacts:
    return RequestFacts(
        protocol="openai",
        model="gpt-4o",
        feature=feature,
        input=Count(tokens, exact, "o200k_base"),
        max_output=max_output,
        n=n,
        identity=identity or Identity(),
    )


# ---------------------------------------------------------------- routing


def test_explicit_model_kept() -> None:
    assert resolve_model("gpt-4o-mini", feature="chat", step="planning", policy=POLICY) == (
        "gpt-4o-mini"
    )


def test_tier_prefix() -> None:
    assert resolve_model("tier:small", feature=None, step=None, policy=POLICY) == (
        "claude-haiku-4-5"
    )


def test_unknown_tier_suggests_tiers() -> None:
    with pytest.raises(UnknownModel) as info:
        resolve_model("tier:huge", feature=None, step=None, policy=POLICY)
    assert "tier:small" in info.value.suggestions


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("planning", "claude-opus-4-1"),
        ("review", "claude-sonnet-4-5"),
        ("direct", "gpt-4.1"),
        ("tiered", "claude-haiku-4-5"),
    ],
)
def test_auto_routes_by_step(step: str, expected: str) -> None:
    assert resolve_model("auto", feature="chat", step=step, policy=POLICY) == expected


def test_auto_or_missing_uses_feature_model() -> None:
    assert resolve_model("auto", feature="chat", step=None, policy=POLICY) == "gpt-4o"
    assert resolve_model(None, feature="chat", step="unrouted", policy=POLICY) == "gpt-4o"
    assert resolve_model("", feature="summarize", step=None, policy=POLICY) == ("claude-haiku-4-5")


def test_auto_without_route_is_clear_error() -> None:
    with pytest.raises(InvalidRequest, match="routed step"):
        resolve_model("auto", feature="free", step=None, policy=POLICY)


# ---------------------------------------------------------------- output clamps


def test_absent_max_output_set_to_feature_cap() -> None:
    d = decide(facts(100), POLICY, GPT4O)
    assert d.action is Action.ADMIT
    assert d.max_output == 1000
    assert d.clamp is not None
    assert (d.clamp.reason, d.clamp.requested) == (ClampReason.FEATURE_CAP, None)


def test_larger_max_output_lowered_smaller_kept() -> None:
    d = decide(facts(100, max_output=5000), POLICY, GPT4O)
    assert d.max_output == 1000
    assert d.clamp is not None
    assert d.clamp.requested == 5000
    kept = decide(facts(100, max_output=1000), POLICY, GPT4O)
    assert (kept.max_output, kept.clamp) == (1000, None)
    low = decide(facts(100, max_output=10), POLICY, GPT4O)
    assert (low.max_output, low.clamp) == (10, None)


def test_feature_cap_shared_by_n_choices() -> None:
    d = decide(facts(100, n=3), POLICY, GPT4O)
    assert d.max_output == 333
    assert d.amounts is not None
    assert d.amounts.tokens == 100 + 333 * 3


def test_n_larger_than_cap_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="n=1001"):
        decide(facts(100, n=1001), POLICY, GPT4O)


def test_context_window_clamps_output() -> None:
    d = decide(facts(700, feature="free"), POLICY, TINY)
    assert d.max_output == 300
    assert d.clamp is not None
    assert d.clamp.reason is ClampReason.CONTEXT_WINDOW
    d2 = decide(facts(700, feature="free", max_output=250, n=4), POLICY, TINY)
    assert (d2.max_output, d2.clamp) == (250, None)
    assert d2.amounts is not None
    assert d2.amounts.tokens == 700 + 250 * 4


def test_model_max_output_clamps() -> None:
    d = decide(facts(10, feature="free"), POLICY, TINY)
    assert d.max_output == 800
    assert d.clamp is not None
    assert d.clamp.reason is ClampReason.MODEL_MAX_OUTPUT


def test_invalid_n_and_max_output() -> None:
    with pytest.raises(InvalidRequest):
        decide(facts(10, n=0), POLICY, GPT4O)
    with pytest.raises(InvalidRequest):
        decide(facts(10, max_output=0), POLICY, GPT4O)


# ---------------------------------------------------------------- input boundaries


def test_exact_boundary_reject_feature() -> None:
    ok = decide(facts(16000, feature="summarize"), POLICY, GPT4O)
    assert ok.action is Action.ADMIT
    over = decide(facts(16001, feature="summarize"), POLICY, GPT4O)
    assert over.action is Action.REJECT
    assert over.holds == ()
    err = over.error
    assert isinstance(err, InputBudgetExceeded)
    assert "summarize" in err.message and "16001" in err.message and "16000" in err.message
    assert (err.limit, err.requested, err.status, err.code) == (
        16000,
        16001,
        400,
        "input_budget_exceeded",
    )


def test_estimated_count_marked_in_message() -> None:
    over = decide(facts(16001, feature="summarize", exact=False), POLICY, GPT4O)
    assert over.error is not None
    assert "estimated" in over.error.message


def test_exact_boundary_trim() -> None:
    assert decide(facts(4000), POLICY, GPT4O).action is Action.ADMIT
    over = decide(facts(4001), POLICY, GPT4O)
    assert (over.action, over.trim_to, over.holds) == (Action.TRIM, 4000, ())


def test_summarize_action() -> None:
    d = decide(facts(101, feature="sum2"), POLICY, GPT4O)
    assert (d.action, d.trim_to) == (Action.SUMMARIZE, 100)


def test_context_window_boundary() -> None:
    assert decide(facts(999, feature="free"), POLICY, TINY).max_output == 1
    full = decide(facts(1000, feature="free"), POLICY, TINY)
    assert full.action is Action.REJECT
    assert full.error is not None
    assert "context window" in full.error.message and "tiny" in full.error.message


def test_context_window_trim_leaves_output_room() -> None:
    trim_policy = Policy.from_mapping(
        {"features": {"t": {"on_exceed": "trim", "max_output": 200}}}, env={}
    )
    d = decide(facts(5000, feature="t"), trim_policy, TINY)
    assert (d.action, d.trim_to) == (Action.TRIM, 800)
    again = decide(facts(800, feature="t"), trim_policy, TINY)
    assert (again.action, again.max_output) == (Action.ADMIT, 200)


def test_trim_target_after_trim_is_admitted() -> None:
    first = decide(facts(9000), POLICY, GPT4O)
    assert first.trim_to is not None
    again = decide(facts(first.trim_to), POLICY, GPT4O)
    assert again.action is Action.ADMIT


# ---------------------------------------------------------------- holds


def test_holds_amounts_tokens_and_cost() -> None:
    ident = Identity(key_id="k1", user="u42", plan="free", run="r1")
    d = decide(facts(1000, max_output=500, identity=ident), POLICY, GPT4O)
    got = {h.key: (h.amount, h.limit) for h in d.holds}
    assert got["global:tokens:minute"] == (1500, 1_000_000)
    assert got["user:u42:tokens:day"] == (1500, 10000)
    # 1000 in × $2.50/M + 500 out × $10/M = $0.0075
    assert got["run:user.u42:r1:cost:day"] == (7_500_000, 10**9)
    assert d.amounts is not None
    assert d.amounts.cost_nusd == 7_500_000


# ---------------------------------------------------------------- output floors

THINKING = (1025, "extended thinking needs thinking.budget_tokens >= 1024",
            "thinking.budget_tokens")


def test_lowered_cap_below_the_floor_names_the_feature_cap() -> None:
    f = facts(100, feature="summarize", max_output=32000)
    f.output_floor = THINKING
    with pytest.raises(InvalidRequest) as info:
        decide(f, POLICY, GPT4O)
    message = info.value.message
    assert "max_output of feature 'summarize' (500 tokens)" in message
    assert "below the 1025 this request needs" in message
    assert info.value.param == "thinking.budget_tokens"


def test_floor_only_binds_a_lowered_cap() -> None:
    f = facts(100, feature="free", max_output=32000)  # lowered to gpt-4o's 16,384
    f.output_floor = THINKING
    assert decide(f, POLICY, GPT4O).max_output == 16_384
    own = facts(100, max_output=500)  # the client's own small cap: the provider judges it
    own.output_floor = THINKING
    assert decide(own, POLICY, GPT4O).max_output == 500
    model = facts(10, feature="free", max_output=5000)  # TINY's output limit is 800
    model.output_floor = THINKING
    with pytest.raises(InvalidRequest, match="output limit of model 'tiny' \\(800 tokens\\)"):
        decide(model, POLICY, TINY)


# ---------------------------------------------------------------- denials


def denial(
    window: Window, metric: Metric = Metric.TOKENS, *, requested: int = 50, reset_in: float = 30.2
) -> Denial:
    return Denial(
        key=f"user:u42:{metric.value}:{window.value}",
        limit=1000,
        used=990,
        requested=requested,
        reset_at=1000.0 + reset_in,
        window=window,
        metric=metric,
    )


def test_minute_window_is_rate_limited_and_retryable() -> None:
    err = denial_to_error(denial(Window.MINUTE), now=1000.0)
    assert type(err) is RateLimited
    assert (err.status, err.code) == (429, "rate_limited")
    assert err.retry_after == 31
    assert err.details["should_retry"] is True
    assert (err.limit, err.used, err.requested, err.limit_key) == (
        1000,
        990,
        50,
        "user:u42:tokens:minute",
    )


def test_requests_metric_is_rate_limited() -> None:
    err = denial_to_error(denial(Window.HOUR, Metric.REQUESTS, reset_in=3000), now=1000.0)
    assert type(err) is RateLimited
    assert err.details["should_retry"] is False


def test_day_budget_is_budget_exceeded_and_not_retryable() -> None:
    err = denial_to_error(denial(Window.DAY, reset_in=6 * 3600 + 0.5), now=1000.0)
    assert type(err) is BudgetExceeded
    assert err.code == "budget_exceeded"
    assert err.retry_after == 6 * 3600 + 1
    assert err.details["should_retry"] is False
    assert "daily token limit of user 'u42'" in err.message
    assert "6h0m1s" in err.message


def test_retry_boundary_sixty_seconds() -> None:
    assert denial_to_error(denial(Window.HOUR, reset_in=60), 1000.0).details["should_retry"]
    assert not denial_to_error(denial(Window.HOUR, reset_in=60.001), 1000.0).details["should_retry"]


def test_call_larger_than_limit_never_retries() -> None:
    err = denial_to_error(denial(Window.MINUTE, requested=5000, reset_in=5), 1000.0)
    assert err.details["should_retry"] is False
    assert "more than" in err.message


def test_cost_denial_in_dollars() -> None:
    d = Denial(
        "global:cost:month", 5 * 10**9, 4_999_000_000, 2_000_000, 1e6, Window.MONTH, Metric.COST
    )
    err = denial_to_error(d, 0.0)
    assert type(err) is BudgetExceeded
    assert "$4.999 of $5 used" in err.message and "$0.002" in err.message


def test_reset_in_past_still_retry_after_one() -> None:
    assert denial_to_error(denial(Window.MINUTE, reset_in=-3), 1000.0).retry_after == 1


def test_final_refusal_message_names_limit_and_reset() -> None:
    err = denial_to_error(denial(Window.DAY, reset_in=55633), now=1000.0)
    assert "daily token limit of user 'u42'" in err.message
    assert "resets in 15h27m13s (at 1970-01-01T15:43:53Z)" in err.message
    assert "will not clear soon" in err.message
    assert "clear soon" not in denial_to_error(denial(Window.MINUTE), 1000.0).message


def test_retry_within_is_configurable() -> None:
    hour = denial(Window.HOUR, reset_in=300)
    assert not denial_to_error(hour, 1000.0).details["should_retry"]
    assert denial_to_error(hour, 1000.0, retry_within=600).details["should_retry"]
    assert not denial_to_error(hour, 1000.0, retry_within=299).details["should_retry"]


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.012, "12ms"),
        (0.0001, "1ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (360, "6m0s"),
        (90.25, "1m30.25s"),
        (3600, "1h0m0s"),
        (86400 + 61, "24h1m1s"),
        (-4, "0s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_ratelimit_headers_pick_tightest() -> None:
    usages = [
        LimitUsage("global:tokens:minute", 1_000_000, 10, 0, 1060.0),
        LimitUsage("user:u1:tokens:day", 10_000, 9_000, 500, 1000.0 + 360),
        LimitUsage("feature:chat:tokens:hour", 5_000, 4_400, 0, 1000.0 + 12),
        LimitUsage("key:k:requests:minute", 60, 10, 1, 1000.012),
        LimitUsage("global:cost:day", 10, 0, 0, 2000.0),
        LimitUsage("not a key", 1, 1, 0, 0.0),
    ]
    assert ratelimit_headers(usages, 1000.0) == {
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "6m0s",
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "49",
        "x-ratelimit-reset-requests": "12ms",
    }


def test_ratelimit_headers_tie_sooner_reset() -> None:
    usages = [
        LimitUsage("a:tokens:day", 100, 50, 0, 5000.0),
        LimitUsage("b:tokens:hour", 80, 30, 0, 1100.0),
    ]
    assert ratelimit_headers(usages, 1000.0)["x-ratelimit-limit-tokens"] == "80"
    assert ratelimit_headers([], 0.0) == {}


@given(
    st.integers(0, 10**7),
    st.integers(0, 10**6),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
)
def test_cost_upper_bound_matches_model_cost(inp: int, out: int, rin: int, rout: int) -> None:
    model = ModelInfo("m", "p", 1, 1, None, rin, rout)
    expected = model.cost_nusd(Usage(input_tokens=inp, output_tokens=out))
    assert cost_upper_bound(model, inp, out) == expected
