"""Which limits apply to a call, their merge order, and the hold key format."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tallygate.config import LimitSet, Policy
from tallygate.core.limits import (
    Amounts,
    Identity,
    escape_id,
    hold_key,
    holds_for,
    parse_key,
    unescape_id,
)
from tallygate.types import Metric, Window

POLICY = Policy.from_mapping(
    {
        "features": {
            "chat": {"max_input": 100, "tokens_per_day": 5000},
            "other": {"max_input": 100},
        },
        "plans": {
            "free": {"tokens_per_day": 1000, "requests_per_minute": 5},
            "pro": {"tokens_per_day": 100_000},
        },
        "limits": {
            "global": {"tokens_per_minute": 1_000_000, "cost_usd_per_day": 500},
            "feature": {
                "default": {"tokens_per_hour": 700, "tokens_per_day": 9000},
                "chat": {"tokens_per_day": 8000},
            },
            "user": {"tokens_per_day": 2000, "tokens_per_month": 30000},
            "plan": {"free": {"tokens_per_day": 1_000_000}, "default": {"tokens_per_day": 7}},
            "key": {"requests_per_minute": 60},
            "model": {
                "default": {"tokens_per_minute": 400_000},
                "gpt-4o": {"cost_usd_per_month": 1000, "rolling": True},
            },
            "run": {"tokens_per_day": 50_000, "tokens_per_run": 200_000,
                    "cost_usd_per_run": 3, "max_attempts_per_step": 4},
        },
    },
    env={},
)
INDEX = POLICY.limit_index
AMOUNTS = Amounts(tokens=300, cost_nusd=12_345)
FULL = Identity(key_id="k1", user="u42", plan="free", run="run-7", step="review")


def keyed(holds: tuple) -> dict[str, tuple[int, int]]:
    return {h.key: (h.amount, h.limit) for h in holds}


def test_every_scope_in_stable_order() -> None:
    holds = holds_for(INDEX, FULL, feature="chat", model="gpt-4o", amounts=AMOUNTS)
    assert [h.key for h in holds] == [
        "global:tokens:minute",
        "global:cost:day",
        "feature:chat:tokens:hour",
        "feature:chat:tokens:day",
        "plan:free:tokens:day",
        "user:u42:tokens:day",
        "user:u42:tokens:month",
        "user:u42:requests:minute",
        "key:k1:requests:minute",
        "model:gpt-4o:tokens:minute",
        "model:gpt-4o:cost:month:rolling",
        "run:user.u42:run-7:tokens:day",
        "run:user.u42:run-7:tokens:run",
        "run:user.u42:run-7:cost:run",
        "step:user.u42:run-7:review:requests:run",
    ]


def test_amounts_by_metric_and_limits_merged() -> None:
    got = keyed(holds_for(INDEX, FULL, feature="chat", model="gpt-4o", amounts=AMOUNTS))
    assert got["global:cost:day"] == (12_345, 500 * 10**9)
    # feature: default < limits.feature.chat < features.chat inline
    assert got["feature:chat:tokens:day"] == (300, 5000)
    assert got["feature:chat:tokens:hour"] == (300, 700)
    # user: limits.user overridden by the plan
    assert got["user:u42:tokens:day"] == (300, 1000)
    assert got["user:u42:tokens:month"] == (300, 30000)
    assert got["user:u42:requests:minute"] == (1, 5)
    assert got["key:k1:requests:minute"] == (1, 60)
    assert got["model:gpt-4o:cost:month:rolling"] == (12_345, 1000 * 10**9)


def test_defaults_for_unlisted_names() -> None:
    ident = Identity(user="u1", plan="pro")
    got = keyed(holds_for(INDEX, ident, feature="unlisted", model="claude-x", amounts=AMOUNTS))
    assert got["feature:unlisted:tokens:day"] == (300, 9000)
    assert got["plan:pro:tokens:day"] == (300, 7)  # limits.plan.default
    assert got["user:u1:tokens:day"] == (300, 100_000)
    assert got["model:claude-x:tokens:minute"] == (300, 400_000)
    assert not any(k.startswith(("key:", "run:")) for k in got)


def test_feature_none_is_default_and_unknown_plan_uses_user_defaults() -> None:
    got = keyed(
        holds_for(
            INDEX, Identity(user="u9", plan="ghost"), feature=None, model="m", amounts=AMOUNTS
        )
    )
    assert "feature:default:tokens:day" in got
    assert got["user:u9:tokens:day"] == (300, 2000)


def test_key_own_limits_override_key_defaults() -> None:
    own = LimitSet.model_validate({"requests_per_minute": 3, "tokens_per_day": 10})
    got = keyed(
        holds_for(
            INDEX,
            Identity(key_id="k2", key_limits=own.rules),
            feature="other",
            model="m",
            amounts=AMOUNTS,
        )
    )
    assert got["key:k2:requests:minute"] == (1, 3)
    assert got["key:k2:tokens:day"] == (300, 10)


def test_no_limits_no_holds() -> None:
    empty = Policy.from_mapping({}, env={})
    assert holds_for(empty.limit_index, FULL, feature="chat", model="m", amounts=AMOUNTS) == ()


def test_user_ids_cannot_forge_keys() -> None:
    evil = Identity(user="u1:tokens:day", run="{tag} x%")
    got = keyed(holds_for(INDEX, evil, feature="chat", model="m", amounts=AMOUNTS))
    assert "user:u1%3Atokens%3Aday:tokens:day" in got
    assert "run:user.u1%3Atokens%3Aday:%7Btag%7D%20x%25:tokens:day" in got
    for key in got:
        parsed = parse_key(key)
        assert parsed.ident in (None, "chat", "free", "m", "u1:tokens:day", "{tag} x%")


def test_runs_belong_to_their_caller() -> None:
    """The same run id from another user, or from a key without a user, is another run;
    a user's keys share their runs."""
    def run_keys(ident: Identity) -> set[str]:
        return {h.key for h in holds_for(INDEX, ident, feature="chat", model="m",
                                         amounts=AMOUNTS) if h.key.startswith("run:")}

    alice = run_keys(Identity(key_id="k1", user="alice", run="ticket-42"))
    assert alice == run_keys(Identity(key_id="k2", user="alice", run="ticket-42"))
    assert alice.isdisjoint(run_keys(Identity(key_id="k3", user="bob", run="ticket-42")))
    by_key = run_keys(Identity(key_id="alice", run="ticket-42"))  # a key id named alice
    assert by_key == {"run:key.alice:ticket-42:tokens:day",
                      "run:key.alice:ticket-42:tokens:run",
                      "run:key.alice:ticket-42:cost:run"}
    assert by_key.isdisjoint(alice)
    assert "run:-:ticket-42:tokens:run" in run_keys(Identity(run="ticket-42"))
    # Unescaped, a dotted user cannot pose as another owner kind either.
    parsed = parse_key(next(iter(run_keys(Identity(user="key.k1", run="r")))))
    assert (parsed.owner, parsed.run) == ("user.key.k1", "r")


def test_loop_cap_counts_attempts_of_a_step_in_a_run() -> None:
    got = {h.key: h for h in holds_for(INDEX, FULL, feature="chat", model="m",
                                       amounts=AMOUNTS)}
    step = got["step:user.u42:run-7:review:requests:run"]
    assert (step.amount, step.limit, step.window, step.metric) == (
        1, 4, Window.RUN, Metric.REQUESTS)
    assert got["run:user.u42:run-7:tokens:run"].amount == 300
    assert got["run:user.u42:run-7:cost:run"].limit == 3 * 10**9
    no_run = Identity(user="u42", step="review")  # no run: nothing to count attempts in
    assert not any(h.key.startswith("step:") for h in holds_for(
        INDEX, no_run, feature="chat", model="m", amounts=AMOUNTS))
    parsed = parse_key("step:user.u%3A1:r%201:review:requests:run")
    assert (parsed.scope, parsed.owner, parsed.run, parsed.ident) == (
        "step", "user.u:1", "r 1", "review")
    assert parsed.describe() == "step 'review' of run 'r 1' of user 'u:1'"
    assert parse_key("run:key.k9:r1:cost:run").describe() == "run 'r1' of key 'k9'"
    assert parse_key("run:-:r1:cost:run").describe() == "run 'r1'"


def test_hold_key_roundtrip() -> None:
    key = hold_key("user", escape_id("a:b"), Metric.COST, Window.MONTH, True)
    assert key == "user:a%3Ab:cost:month:rolling"
    parsed = parse_key(key)
    assert (parsed.scope, parsed.ident, parsed.metric, parsed.window, parsed.rolling) == (
        "user",
        "a:b",
        Metric.COST,
        Window.MONTH,
        True,
    )
    assert parse_key("global:tokens:minute").ident is None


@given(st.text(min_size=1, max_size=30))
def test_escape_roundtrips_and_has_no_separator(value: str) -> None:
    escaped = escape_id(value)
    assert ":" not in escaped and "{" not in escaped and "}" not in escaped
    assert unescape_id(escaped) == value


def test_amounts_as_actual() -> None:
    assert AMOUNTS.as_actual() == {"tokens": 300, "requests": 1, "cost": 12_345}
