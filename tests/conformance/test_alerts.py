"""AlertEngine against a real SQLite ledger, the memory state store and a local webhook
receiver: each rule fires once per window with the right figures; a failing webhook is
retried; a hanging one never blocks record() or evaluate()."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tallygate.config import Policy
from tallygate.core.catalog import Catalog
from tallygate.keys import open_keystore
from tallygate.ledger import open_ledger
from tallygate.ledger.base import LedgerStore
from tallygate.observe.alerts import AlertEngine
from tallygate.observe.figures import LedgerFigures
from tallygate.observe.webhooks import WebhookSender
from tallygate.state.memory import MemoryStore
from tallygate.types import CallRecord, Hold, Metric, Outcome, Window
from tests.support.webhooks import Receiver

HOUR0 = 1_800_000_000.0  # an hour boundary (and a minute boundary)
USD = 1_000_000_000


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[LedgerStore]:
    store = await open_ledger(f"sqlite:///{tmp_path}/ledger.db")
    yield store
    await store.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


def make_engine(rules: list[dict[str, Any]], ledger: LedgerStore, store: Any = None,
                **policy: Any) -> AlertEngine:
    pol = Policy.from_mapping({"alerts": rules, **policy})
    engine = AlertEngine(pol.alerts, store or MemoryStore(), LedgerFigures(ledger),
                         policy=pol, catalog=Catalog(pol.models), interval=5.0,
                         sender=WebhookSender(retries=3, backoff=0.01, timeout=2.0))
    engine.sender.start()
    return engine


def row(rid: str, ts: float, **kw: Any) -> CallRecord:
    base: dict[str, Any] = dict(outcome=Outcome.OK, status=200, feature="chat", user="alice",
                                step="execution", model_used="gpt-4o-mini", input_tokens=10,
                                output_tokens=5)
    base.update(kw)
    return CallRecord(rid, ts, **base)


async def test_cost_rule_fires_once_per_window(ledger: LedgerStore, receiver: Receiver) -> None:
    engine = make_engine([{"metric": "cost_usd", "window": "hour", "above": "0.5",
                           "notify": receiver.url}], ledger)
    await ledger.write_batch([
        row("a", HOUR0 + 10, cost_nusd=USD // 5),
        row("b", HOUR0 + 20, cost_nusd=USD // 5, feature="review", user="bob"),
    ])
    assert await engine.evaluate(HOUR0 + 60) == []  # 0.4 USD: under the threshold
    await ledger.write_batch([row("c", HOUR0 + 70, cost_nusd=USD // 4, step="review")])
    [fired] = await engine.evaluate(HOUR0 + 80)
    assert fired["figures"]["cost_usd"] == "0.65" and fired["figures"]["calls"] == 3
    assert fired["figures"]["threshold_usd"] == "0.5"
    assert fired["window"]["name"] == "hour"
    assert fired["window"]["start"] == "2027-01-15T08:00:00Z"
    assert (fired["window"]["start_ts"], fired["window"]["end_ts"]) == (HOUR0, HOUR0 + 3600)
    top = fired["top_contributors"]
    assert top["feature"][0] == {"feature": "chat", "calls": 2, "cost_nusd": 450_000_000,
                                 "rejected": 0, "tokens": 30}
    assert [u["user"] for u in top["user"]] == ["alice", "bob"]
    assert top["step"][0]["step"] == "execution"
    await ledger.write_batch([row("d", HOUR0 + 90, cost_nusd=USD)])
    assert await engine.evaluate(HOUR0 + 100) == []  # once per window
    [body] = await receiver.wait_for(1)
    assert body["rule"]["metric"] == "cost_usd" and body["figures"]["cost_nusd"] == 650_000_000
    # The next hour is a new window.
    await ledger.write_batch([row("e", HOUR0 + 3700, cost_nusd=USD)])
    [again] = await engine.evaluate(HOUR0 + 3710)
    assert again["figures"]["cost_usd"] == "1"
    await engine.sender.stop()
    assert len(receiver.posts) == 2


async def test_spike_at_the_end_of_a_window_is_not_missed(
        ledger: LedgerStore, receiver: Receiver) -> None:
    engine = make_engine([{"metric": "cost_usd", "window": "minute", "above": 1,
                           "notify": receiver.url}], ledger)
    await ledger.write_batch([row("a", HOUR0 + 59.5, cost_nusd=2 * USD)])
    [fired] = await engine.evaluate(HOUR0 + 61)  # evaluated in the next minute
    assert fired["window"]["start_ts"] == HOUR0 and fired["figures"]["cost_usd"] == "2"
    await engine.sender.stop()


async def test_rejection_rate(ledger: LedgerStore, receiver: Receiver) -> None:
    engine = make_engine([{"metric": "rejection_rate", "window": "minute", "above": 0.25,
                           "notify": receiver.url}], ledger)
    rows = [row(f"ok{i}", HOUR0 + i) for i in range(3)]
    rows.append(row("r1", HOUR0 + 5, outcome=Outcome.REJECTED, status=429, user="mallory"))
    await ledger.write_batch(rows)
    assert await engine.evaluate(HOUR0 + 10) == []  # 1/4 is not above 0.25
    await ledger.write_batch([row("r2", HOUR0 + 11, outcome=Outcome.REJECTED, status=429,
                                  user="mallory")])
    [fired] = await engine.evaluate(HOUR0 + 12)
    assert fired["figures"] == {"rejection_rate": 0.4, "rejected": 2, "calls": 5,
                                "threshold": "0.25"}
    assert fired["top_contributors"]["user"][0]["user"] in ("alice", "mallory")
    assert {u["user"]: u["rejected"] for u in fired["top_contributors"]["user"]} == {
        "alice": 0, "mallory": 2}
    assert await engine.evaluate(HOUR0 + 13) == []
    await engine.sender.stop()


async def test_context_utilization_per_call(ledger: LedgerStore, receiver: Receiver) -> None:
    engine = make_engine([{"metric": "context_utilization", "above": 0.9,
                           "notify": receiver.url}], ledger)
    window = Catalog().get("gpt-4o-mini").context_window
    engine.record(row("small", HOUR0 + 1, input_tokens=window // 2))
    assert await engine.evaluate(HOUR0 + 2) == []
    big = int(window * Decimal("0.95"))
    engine.record(row("big1", HOUR0 + 3, input_tokens=big, user="carol", step="planning"))
    engine.record(row("big2", HOUR0 + 4, input_tokens=big))
    [fired] = await engine.evaluate(HOUR0 + 5)  # once per (default: hourly) window
    f = fired["figures"]
    assert (f["request_id"], f["input_tokens"], f["context_window"]) == ("big1", big, window)
    assert f["utilization"] == pytest.approx(0.95, abs=1e-5) and f["threshold"] == "0.9"
    assert fired["top_contributors"]["user"] == [{"user": "carol"}]
    assert fired["window"]["name"] == "hour"
    engine.record(row("big3", HOUR0 + 3601, input_tokens=big))
    assert len(await engine.evaluate(HOUR0 + 3602)) == 1  # the next hour fires again
    await engine.sender.stop()
    assert [p["figures"]["request_id"] for p in receiver.posts] == ["big1", "big3"]


async def test_budget_used_per_user(ledger: LedgerStore, receiver: Receiver) -> None:
    store = MemoryStore()
    engine = make_engine([{"metric": "budget_used", "scope": "user", "above": 0.8,
                           "notify": receiver.url}], ledger, store,
                         plans={"free": {"tokens_per_day": 1000}})
    now = HOUR0 + 100
    for user, used in (("alice", 850), ("bob", 300)):
        hold = Hold(f"user:{user}:tokens:day", used, 1000, Window.DAY, Metric.TOKENS)
        assert await store.reserve(f"r-{user}", [hold], lease=60, now=now) is None
        await store.settle(f"r-{user}", {"tokens": used}, now=now)
        engine.record(row(f"c-{user}", now, user=user, plan="free"))
    [fired] = await engine.evaluate(now + 1)
    assert fired["figures"] == {"limit_key": "user:alice:tokens:day", "scope": "user",
                                "id": "alice", "metric": "tokens", "used": 850,
                                "limit": 1000, "used_fraction": 0.85, "threshold": "0.8"}
    assert fired["window"]["name"] == "day"
    engine.record(row("again", now + 2, user="alice", plan="free"))
    assert await engine.evaluate(now + 3) == []  # once per day window
    await engine.sender.stop()
    assert len(receiver.posts) == 1


async def test_budget_used_counts_a_keys_own_limits(ledger: LedgerStore,
                                                    receiver: Receiver) -> None:
    """A virtual key's own limit (set at `keys create --limit`) is watched like the
    policy's: no `limits.key` in the policy, the key alone carries tokens_per_day."""
    keys = await open_keystore("memory://")
    key, _ = await keys.create("alice", "free", limits={"tokens_per_day": 1000})
    plain, _ = await keys.create("bob", "free")
    store = MemoryStore()
    engine = make_engine([{"metric": "budget_used", "scope": "key", "above": 0.5,
                           "notify": receiver.url}], ledger, store)
    engine.keys = keys
    now = HOUR0 + 100
    hold = Hold(f"key:{key.id}:tokens:day", 700, 1000, Window.DAY, Metric.TOKENS)
    assert await store.reserve("r", [hold], lease=60, now=now) is None
    await store.settle("r", {"tokens": 700}, now=now)
    engine.record(row("c1", now, key_id=key.id, plan="free"))
    engine.record(row("c2", now, key_id=plain.id, user="bob", plan="free"))
    [fired] = await engine.evaluate(now + 1)
    assert fired["figures"]["limit_key"] == f"key:{key.id}:tokens:day"
    assert (fired["figures"]["used"], fired["figures"]["limit"]) == (700, 1000)
    await engine.sender.stop()
    await keys.close()


async def test_failing_webhook_is_retried(ledger: LedgerStore) -> None:
    flaky = await Receiver(fail_first=2).start()
    try:
        engine = make_engine([{"metric": "cost_usd", "above": 0, "notify": flaky.url}],
                             ledger)
        await ledger.write_batch([row("a", HOUR0 + 1, cost_nusd=1)])
        assert len(await engine.evaluate(HOUR0 + 2)) == 1
        [body] = await flaky.wait_for(1)
        assert flaky.attempts == 3 and body["figures"]["cost_nusd"] == 1
        await engine.sender.stop(drain=5)  # the sender has read the 204 by now
        assert engine.sender.stats.delivered == 1 and engine.sender.stats.attempts == 3
    finally:
        await flaky.close()


async def test_hanging_webhook_never_blocks_record_or_evaluate(ledger: LedgerStore) -> None:
    import asyncio

    stuck = await Receiver(hang=True).start()
    try:
        pol = Policy.from_mapping({"alerts": [
            {"metric": "context_utilization", "above": 0.5, "notify": stuck.url}]})
        sender = WebhookSender(queue_size=2, retries=0, timeout=30.0)
        engine = AlertEngine(pol.alerts, MemoryStore(), LedgerFigures(ledger), policy=pol,
                             catalog=Catalog(), sender=sender)
        sender.start()
        window = Catalog().get("gpt-4o-mini").context_window
        for hour in range(5):  # five windows → five alerts, the receiver never answers
            for i in range(1000):
                engine.record(row(f"{hour}-{i}", HOUR0 + hour * 3600 + i,
                                  input_tokens=window - 1))
            fired = await asyncio.wait_for(engine.evaluate(HOUR0 + hour * 3600 + 2000), 5)
            assert len(fired) == 1
        await asyncio.sleep(0.05)
        assert stuck.attempts == 1  # one POST in flight, hanging
        # One in flight + two queued; the rest are dropped, not buffered without bound.
        assert sender.stats.queued == 3 and sender.stats.dropped == 2
        stuck.release.set()
        await sender.stop(drain=5)
        assert sender.stats.delivered == 3
    finally:
        await stuck.close()


RUNAWAY = {"limits": {"run": {"max_input_growth": "1.5", "growth_calls": 3,
                              "max_input_per_call": 500_000}}}


async def test_runaway_context_fires_once_per_run_and_window(
        ledger: LedgerStore, receiver: Receiver) -> None:
    engine = make_engine([{"metric": "runaway_context", "window": "hour",
                           "notify": receiver.url}], ledger, **RUNAWAY)
    for i, size in enumerate((10_000, 12_000, 11_000, 20_000, 40_000, 90_000)):
        engine.record(row(f"a{i}", HOUR0 + i, run="loop-1", input_tokens=size))
    # A creeping conversation of another run, and the same run id of another user.
    for i, size in enumerate((10_000, 11_000, 12_000, 13_000)):
        engine.record(row(f"b{i}", HOUR0 + i, run="calm", input_tokens=size))
        engine.record(row(f"c{i}", HOUR0 + i, run="loop-1", user="bob", input_tokens=size))
    [fired] = await engine.evaluate(HOUR0 + 10)
    figures = fired["figures"]
    assert (figures["run"], figures["user"], figures["rule"]) == ("loop-1", "alice", "growth")
    assert figures["recent_inputs"] == [11_000, 20_000, 40_000]  # the first hit
    assert (figures["growth"], figures["limit"], figures["refused"]) == ("3.636", "1.5", False)
    assert fired["rule"]["above"] is None and fired["window"]["name"] == "hour"
    engine.record(row("a9", HOUR0 + 20, run="loop-1", input_tokens=600_000))  # size rule
    assert await engine.evaluate(HOUR0 + 21) == []  # once per run per window
    engine.record(row("a10", HOUR0 + 3600, run="loop-1", input_tokens=700_000))
    [again] = await engine.evaluate(HOUR0 + 3601)
    assert again["figures"]["rule"] == "size" and again["figures"]["input_tokens"] == 700_000
    await engine.sender.stop()
    assert len(receiver.posts) == 2


async def test_runaway_refusals_by_the_engine_fire_too(
        ledger: LedgerStore, receiver: Receiver) -> None:
    engine = make_engine([{"metric": "runaway_context", "notify": receiver.url}], ledger,
                         **RUNAWAY)
    engine.record(row("r1", HOUR0, outcome=Outcome.REJECTED, status=400,
                      error_code="runaway_context", input_tokens=900_000))
    [fired] = await engine.evaluate(HOUR0 + 1)
    assert fired["figures"]["refused"] is True and fired["figures"]["run"] is None
    assert fired["figures"]["input_tokens"] == 900_000
    await engine.sender.stop()


async def test_a_conversation_without_a_run_alerts_from_the_engines_rows(
        ledger: LedgerStore, receiver: Receiver) -> None:
    """on_runaway: alert (the default) and no X-Tallygate-Run: the engine notes each call's
    conversation on its row, and the alert engine follows that thread."""
    from tallygate.engine import CallContext, Engine, MemoryRecorder, new_call_id
    from tests.engine.conftest import Clock, FakePort, body, growing_turns, reply

    rules = [{"metric": "runaway_context", "notify": receiver.url}]
    alerts = make_engine(rules, ledger, **RUNAWAY)
    pol = Policy.from_mapping({"alerts": rules, **RUNAWAY}, env={})
    recorder = MemoryRecorder()
    engine = Engine(pol, Catalog(pol.models), MemoryStore(), recorder, clock=Clock(HOUR0))
    port = FakePort(then=lambda call: reply(call.count.tokens, 5))

    def ctx(user: str) -> CallContext:
        return CallContext("openai", "chat/completions", new_call_id(), user=user,
                           key_id=f"k-{user}", plan="free")

    for n in range(1, 4):  # alice's conversation grows ~4x a call; nothing is refused
        await engine.run(ctx("alice"), body(growing_turns(n)), port)
    await engine.run(ctx("bob"), body(growing_turns(1)), port)  # bob's: one call, calm
    assert [r.outcome for r in recorder.rows] == [Outcome.OK] * 4
    for r in recorder.rows:
        alerts.record(r)
    [fired] = await alerts.evaluate(HOUR0 + 1)
    figures = fired["figures"]
    assert (figures["run"], figures["user"], figures["rule"]) == (None, "alice", "growth")
    assert figures["conversation"].startswith("conversation:user.alice:")
    assert figures["refused"] is False and len(figures["recent_inputs"]) == 3
    assert fired["top_contributors"] == {
        "conversation": [{"conversation": figures["conversation"], "user": "alice"}]}
    await alerts.sender.stop()
    assert len(receiver.posts) == 1


def test_a_runaway_alert_needs_the_guard_configured() -> None:
    from tallygate.errors import ConfigError

    with pytest.raises(ConfigError, match=r"runaway_context alert needs limits\.run"):
        Policy.from_mapping({"alerts": [{"metric": "runaway_context",
                                         "notify": "https://hooks.example.com/x"}]})


async def test_budget_used_on_a_runs_lifetime_budget(
        ledger: LedgerStore, receiver: Receiver) -> None:
    store = MemoryStore()
    engine = make_engine([{"metric": "budget_used", "scope": "run", "above": 0.5,
                           "notify": receiver.url}], ledger, store,
                         limits={"run": {"tokens_per_run": 1000}})
    key = "run:user.alice:r7:tokens:run"
    assert await store.reserve("r", [Hold(key, 600, 1000, Window.RUN)], lease=60,
                               now=HOUR0) is None
    await store.settle("r", {"tokens": 600}, now=HOUR0)
    engine.record(row("c", HOUR0, run="r7"))
    [fired] = await engine.evaluate(HOUR0 + 1)
    assert fired["figures"]["limit_key"] == key and fired["figures"]["id"] == "r7"
    assert fired["window"] == {"name": "run", "start": None, "end": None,
                               "start_ts": None, "end_ts": None}
    engine.record(row("c2", HOUR0 + 86_400 * 3, run="r7"))
    assert await engine.evaluate(HOUR0 + 86_400 * 3) == []  # once for the run
    await engine.sender.stop()


async def test_a_slack_rule_posts_slacks_shape(ledger: LedgerStore, receiver: Receiver) -> None:
    """`format: slack`: the webhook gets Slack's `{"text", "blocks"}`, a caller's names
    escaped; what the engine returns (and the alert log keeps) is the JSON payload."""
    engine = make_engine([{"metric": "cost_usd", "window": "hour", "above": "0.5",
                           "notify": receiver.url, "format": "slack"}], ledger)
    await ledger.write_batch([row("a", HOUR0 + 10, cost_nusd=USD, user="<!channel>")])
    [fired] = await engine.evaluate(HOUR0 + 20)
    assert fired["source"] == "tallygate" and fired["figures"]["cost_usd"] == "1"
    [body] = await receiver.wait_for(1)
    await engine.sender.stop()
    assert set(body) == {"text", "blocks"}
    assert body["text"].startswith(f"*tallygate alert* ({fired['rule']['id']}): spend $1 ")
    assert "user: &lt;!channel&gt;" in body["text"] and "<!channel>" not in body["text"]


def test_an_alert_format_is_json_or_slack() -> None:
    from tallygate.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        Policy.from_mapping({"alerts": [{"metric": "cost_usd", "above": 1,
                                         "notify": "http://127.0.0.1:9/x", "format": "slak"}]})
    assert "format" in refused.value.message and "(did you mean 'slack'?)" in refused.value.message


def refusal(rid: str, ts: float, limit: str, **kw: Any) -> CallRecord:
    """A row as the engine writes a refusal by a limit (engine/rows.py `refused`)."""
    return row(rid, ts, outcome=Outcome.REJECTED, status=429, error_code="budget_exceeded",
               input_tokens=0, output_tokens=0,
               detail=f'{{"message": "over", "limit": "{limit}", "v": 1}}', **kw)


async def test_a_used_up_limit_and_its_reset(ledger: LedgerStore, receiver: Receiver) -> None:
    """budget_exhausted: the first refusal of a limit in its window, once across replicas;
    budget_reset: once that window has ended. A rule's scope picks the limits."""
    engine = make_engine([
        {"metric": "budget_exhausted", "scope": "user", "notify": receiver.url},
        {"metric": "budget_reset", "scope": "user", "notify": receiver.url,
         "format": "slack"},
    ], ledger)
    day0 = 1_799_971_200.0  # a UTC midnight (2027-01-15)
    engine.record(row("ok", day0 + 100))  # served: nothing is used up
    engine.record(refusal("r1", day0 + 200, "user:alice:tokens:day"))
    engine.record(refusal("r2", day0 + 300, "user:alice:tokens:day"))  # same window
    engine.record(refusal("r3", day0 + 300, "feature:chat:requests:minute"))  # not in scope
    [used_up] = await engine.evaluate(day0 + 310)
    assert used_up["rule"]["metric"] == "budget_exhausted"
    assert used_up["figures"] == {"limit_key": "user:alice:tokens:day", "scope": "user",
                                  "id": "alice", "metric": "tokens", "window": "day",
                                  "rolling": False, "user": "alice", "request_id": "r1"}
    assert (used_up["window"]["start_ts"], used_up["window"]["end_ts"]) == (
        day0, day0 + 86_400)
    engine.record(refusal("r4", day0 + 400, "user:alice:tokens:day"))
    assert await engine.evaluate(day0 + 410) == []  # once per window
    assert await engine.evaluate(day0 + 86_399) == []  # the window has not ended
    [reset] = await engine.evaluate(day0 + 86_405)
    assert reset["rule"]["metric"] == "budget_reset"
    assert reset["window"]["start_ts"] == day0 + 86_400  # the new window
    assert reset["figures"]["used_up_from"] == "2027-01-15T00:00:00Z"
    assert await engine.evaluate(day0 + 86_500) == []  # once
    engine.record(refusal("r5", day0 + 86_600, "user:alice:tokens:day"))
    [again] = await engine.evaluate(day0 + 86_610)  # used up in the new window: again
    assert again["rule"]["metric"] == "budget_exhausted"
    bodies = await receiver.wait_for(3)
    await engine.sender.stop()
    assert [set(b) for b in bodies] == [set(used_up), {"text", "blocks"}, set(used_up)]
    assert "user alice's tokens per day limit has room again" in bodies[1]["text"]


async def test_a_run_budget_used_up_fires_once_and_never_resets(
        ledger: LedgerStore, receiver: Receiver) -> None:
    engine = make_engine([{"metric": "budget_exhausted", "notify": receiver.url},
                          {"metric": "budget_reset", "notify": receiver.url}], ledger)
    key = "run:user.alice:T-1:tokens:run"
    engine.record(refusal("r1", HOUR0, key, run="T-1"))
    [fired] = await engine.evaluate(HOUR0 + 1)
    assert fired["figures"]["window"] == "run" and fired["window"]["start"] is None
    engine.record(refusal("r2", HOUR0 + 86_400 * 3, key, run="T-1"))
    assert await engine.evaluate(HOUR0 + 86_400 * 3 + 1) == []  # once while the run lives
    assert await engine.evaluate(HOUR0 + 86_400 * 29) == []  # and a lifetime never resets
    await engine.sender.stop()


def test_used_up_and_reset_rules_take_no_threshold() -> None:
    from tallygate.errors import ConfigError

    with pytest.raises(ConfigError, match="has no `above`"):
        Policy.from_mapping({"alerts": [{"metric": "budget_reset", "above": 0.5,
                                         "notify": "http://127.0.0.1:9/x"}]})


async def test_a_rolling_limit_used_up_has_no_reset(ledger: LedgerStore,
                                                    receiver: Receiver) -> None:
    engine = make_engine([{"metric": "budget_exhausted", "notify": receiver.url},
                          {"metric": "budget_reset", "notify": receiver.url}], ledger)
    engine.record(refusal("r1", HOUR0 + 5, "key:key_1:requests:minute:rolling"))
    [fired] = await engine.evaluate(HOUR0 + 6)
    assert fired["figures"]["rolling"] is True
    assert await engine.evaluate(HOUR0 + 600) == []  # frees up gradually: no reset
    await engine.sender.stop()
