"""PostgreSQL restarted under a running gateway (a minor upgrade, a failover): the
connections it closed are replaced on their next use. Rows recorded before, during and
after the restart all reach the ledger once, reads answer again, keys verify and the
alert log records, without restarting tallygate."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tallygate.keys import open_keystore
from tallygate.ledger import LedgerWriter, open_ledger
from tallygate.observe.alert_log import open_alert_log
from tests.conformance.test_alert_log import payload
from tests.conformance.test_ledger import row
from tests.support.servers import postgres_cluster
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.postgres


async def test_rows_and_reads_survive_a_postgres_restart(tmp_path: Path) -> None:
    with postgres_cluster() as cluster:
        store = await open_ledger(cluster.url)
        writer = LedgerWriter(store, journal_dir=tmp_path / "journal", interval=0.01)
        await writer.start()
        try:
            for i in range(20):
                writer.record(row(i))
            await writer.flush()
            await asyncio.to_thread(cluster.stop)
            for i in range(20):  # recorded while the database is down: journaled, kept
                writer.record(row(100 + i))
            await asyncio.sleep(0.1)
            await asyncio.to_thread(cluster.start)
            for i in range(20):
                writer.record(row(200 + i))

            async def drained() -> bool:
                return writer.pending == 0

            await eventually_async(drained, timeout=20)
            assert await store.count() == 60  # reads work again on fresh connections
            ids = {r.request_id for r in await store.records()}
            assert len(ids) == 60
        finally:
            await writer.close()
            await store.close()


async def test_keys_and_alerts_answer_right_after_a_postgres_restart() -> None:
    """The first verification after the restart succeeds (a gateway call with a virtual
    key is not refused because the server went away in between), and the alert log
    takes and shows rows again."""
    with postgres_cluster() as cluster:
        keys = await open_keystore(cluster.url)
        alerts = await open_alert_log(cluster.url)
        try:
            key, secret = await keys.create("u1", "pro")
            await alerts.append([payload("before", "1")], now=time.time())
            await asyncio.to_thread(cluster.restart)
            assert await keys.verify(secret) == key  # the stale connection, replaced
            _, other = await keys.create("u2", "free")
            assert (await keys.verify(other)).user == "u2"
            await alerts.append([payload("after", "2")], now=time.time())
            assert [a["rule"]["id"] for a in await alerts.recent()] == ["after", "before"]
        finally:
            await keys.close()
            await alerts.close()
