"""Fired alerts are kept beside the ledger (memory, SQLite, a real PostgreSQL server):
the alert engine appends each payload it fired, newest first on read, old rows pruned."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tallygate.config import Policy
from tallygate.core.catalog import Catalog
from tallygate.errors import ConfigError
from tallygate.ledger import open_ledger
from tallygate.observe.alert_log import KEEP_SECONDS, open_alert_log
from tallygate.observe.alerts import AlertEngine
from tallygate.observe.figures import LedgerFigures
from tallygate.observe.webhooks import WebhookSender
from tallygate.state.memory import MemoryStore
from tallygate.types import CallRecord, Outcome
from tests.support.ledgers import fresh_ledger_url

HOUR0 = 1_800_000_000.0


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
        return
    with fresh_ledger_url(request.param, tmp_path, request) as found:
        yield found


def payload(rule: str, fired_at: str) -> dict:
    return {"rule": {"id": rule, "metric": "cost_usd"}, "fired_at": fired_at,
            "figures": {"cost_usd": "1.5", "name": "<b>x</b>"}}


async def test_append_recent_and_prune(url: str) -> None:
    log = await open_alert_log(url)
    try:
        await log.append([payload("a", "1")], now=HOUR0)
        await log.append([payload("b", "2"), payload("c", "3")], now=HOUR0 + 10)
        got = await log.recent()
        assert got[0]["rule"]["id"] in {"b", "c"}
        assert {p["rule"]["id"] for p in got} == {"a", "b", "c"}
        assert got[-1]["rule"]["id"] == "a" and got[-1]["figures"]["name"] == "<b>x</b>"
        assert len(await log.recent(limit=1)) == 1
        await log.append([payload("d", "4")], now=HOUR0 + KEEP_SECONDS + 20)
        assert [p["rule"]["id"] for p in await log.recent()] == ["d"]
    finally:
        await log.close()


async def test_the_engine_records_what_it_fired(url: str, tmp_path: Path) -> None:
    if url == "memory://":
        url = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = await open_ledger(url)
    log = await open_alert_log(url)
    pol = Policy.from_mapping({"alerts": [{"metric": "cost_usd", "window": "hour",
                                           "above": "0.1", "notify": "http://127.0.0.1:9/"}]})
    sender = WebhookSender(retries=0, backoff=0.01, timeout=0.2)
    engine = AlertEngine(pol.alerts, MemoryStore(), LedgerFigures(ledger), policy=pol,
                         catalog=Catalog(), sender=sender, log=log)
    try:
        await ledger.write_batch([CallRecord("r1", HOUR0 + 5, Outcome.OK, 200,
                                             cost_nusd=10**9, feature="chat")])
        [fired] = await engine.evaluate(HOUR0 + 10)
        [kept] = await log.recent()
        assert kept["rule"] == fired["rule"] and kept["figures"] == fired["figures"]
    finally:
        await sender.stop()
        await log.close()
        await ledger.close()


async def test_unknown_scheme() -> None:
    with pytest.raises(ConfigError):
        await open_alert_log("redis://127.0.0.1/0")
