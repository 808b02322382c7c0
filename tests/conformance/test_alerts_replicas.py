"""Two gateway replicas' AlertEngines on one Redis state store and one PostgreSQL ledger:
a rule fires once per window in total, not once per replica."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tallygate.config import Policy
from tallygate.core.catalog import Catalog
from tallygate.ledger import open_ledger
from tallygate.ledger.base import LedgerStore
from tallygate.observe.alerts import AlertEngine
from tallygate.observe.figures import LedgerFigures
from tallygate.observe.webhooks import WebhookSender
from tallygate.state.redis import RedisStore
from tallygate.types import CallRecord, Outcome
from tests.support.webhooks import Receiver

USD = 1_000_000_000


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


@pytest.fixture
async def pg_ledger(postgres_url: str) -> AsyncIterator[LedgerStore]:
    ledger = await open_ledger(postgres_url)
    yield ledger
    await ledger.close()


def hour0() -> float:
    """A distinct future hour per test, so rows of other tests in the shared ledger and
    claims in the shared Redis never overlap."""
    return float((2_000_000_000 // 3600 + random.randrange(1, 10**6)) * 3600)


async def replicas(rules: list[dict[str, Any]], redis_url: str, ledger: LedgerStore,
                   ) -> tuple[list[AlertEngine], list[RedisStore]]:
    namespace = "alerts-" + uuid.uuid4().hex[:8]
    policy = Policy.from_mapping({"alerts": rules})
    stores = [RedisStore(redis_url, namespace=namespace) for _ in range(2)]
    engines = []
    for store in stores:
        engine = AlertEngine(policy.alerts, store, LedgerFigures(ledger), policy=policy,
                             catalog=Catalog(), sender=WebhookSender(backoff=0.01))
        engine.sender.start()
        engines.append(engine)
    return engines, stores


async def shut(engines: list[AlertEngine], stores: list[RedisStore]) -> None:
    for engine in engines:
        await engine.sender.stop()
    for store in stores:
        await store.close()


def row(ts: float, **kw: Any) -> CallRecord:
    base: dict[str, Any] = dict(outcome=Outcome.OK, status=200, feature="chat", user="alice",
                                step="review", model_used="gpt-4o-mini", input_tokens=100,
                                output_tokens=20)
    base.update(kw)
    return CallRecord("tg-" + uuid.uuid4().hex, ts, **base)


async def test_cost_rule_fires_once_across_replicas(
        redis_url: str, pg_ledger: LedgerStore, receiver: Receiver) -> None:
    start = hour0()
    engines, stores = await replicas(
        [{"metric": "cost_usd", "window": "hour", "above": 10, "notify": receiver.url}],
        redis_url, pg_ledger)
    # Each replica wrote half of the spend: neither alone is over 10 USD, together 12.
    await pg_ledger.write_batch([row(start + 5, cost_nusd=6 * USD, user="alice"),
                                 row(start + 6, cost_nusd=6 * USD, user="bob",
                                     feature="summarize")])
    results = await asyncio.gather(*(e.evaluate(start + 30) for e in engines))
    assert sorted(len(r) for r in results) == [0, 1]
    [fired] = [p for r in results for p in r]
    assert fired["figures"]["cost_usd"] == "12" and fired["figures"]["calls"] == 2
    assert {u["user"] for u in fired["top_contributors"]["user"]} == {"alice", "bob"}
    # Later evaluations in the same window, on either replica, stay silent.
    again = await asyncio.gather(*(e.evaluate(start + 60) for e in engines))
    assert again == [[], []]
    await receiver.wait_for(1)
    await shut(engines, stores)
    assert len(receiver.posts) == 1


async def test_context_rule_fires_once_across_replicas(
        redis_url: str, pg_ledger: LedgerStore, receiver: Receiver) -> None:
    start = hour0()
    engines, stores = await replicas(
        [{"metric": "context_utilization", "above": 0.9, "notify": receiver.url}],
        redis_url, pg_ledger)
    window = Catalog().get("gpt-4o-mini").context_window
    for i, engine in enumerate(engines):  # each replica saw its own oversized call
        engine.record(row(start + 10 + i, input_tokens=window - 100))
    results = await asyncio.gather(*(e.evaluate(start + 30) for e in engines))
    assert sorted(len(r) for r in results) == [0, 1]
    await receiver.wait_for(1)
    await shut(engines, stores)
    assert len(receiver.posts) == 1


async def test_a_used_up_limit_and_its_reset_fire_once_across_replicas(
        redis_url: str, pg_ledger: LedgerStore, receiver: Receiver) -> None:
    start = hour0()
    engines, stores = await replicas(
        [{"metric": "budget_exhausted", "notify": receiver.url},
         {"metric": "budget_reset", "notify": receiver.url}], redis_url, pg_ledger)
    try:
        for n, engine in enumerate(engines):  # both replicas refused calls of one limit
            engine.record(row(start + 10 + n, outcome=Outcome.REJECTED, status=429,
                              detail='{"limit": "user:alice:tokens:hour", "v": 1}'))
        used_up = [p for e in engines for p in await e.evaluate(start + 20)]
        resets = [p for e in engines for p in await e.evaluate(start + 3601)]
        assert [p["rule"]["metric"] for p in used_up] == ["budget_exhausted"]
        assert [p["rule"]["metric"] for p in resets] == ["budget_reset"]
        await receiver.wait_for(2)
    finally:
        await shut(engines, stores)
