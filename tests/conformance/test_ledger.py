"""One ledger suite over SQLite and a real PostgreSQL server (a fresh database per test)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tallygate.errors import ConfigError
from tallygate.ledger import LedgerStore, LedgerWriter, open_ledger
from tallygate.ledger.journal import Journal
from tallygate.ledger.migrations import LATEST, MIGRATIONS
from tallygate.ledger.rows import to_line
from tallygate.types import CallRecord, Outcome
from tests.support.ledgers import fresh_ledger_url


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path) -> AsyncIterator[str]:
    with fresh_ledger_url(request.param, tmp_path, request) as url:
        yield url


@pytest.fixture
async def store(ledger_url) -> AsyncIterator[LedgerStore]:
    s = await open_ledger(ledger_url)
    try:
        yield s
    finally:
        await s.close()


def row(i: int, **kw) -> CallRecord:
    base = dict(request_id=f"req-{i:06d}", ts=1_790_000_000.0 + i, outcome=Outcome.OK,
                status=200, user=f"u{i % 7}", feature="chat", input_tokens=i, output_tokens=1)
    base.update(kw)
    return CallRecord(**base)


FULL = CallRecord(
    request_id="req-full", ts=1_790_000_123.456789, outcome=Outcome.TRIMMED, status=200,
    client_request_id="client-7", key_id="key_1", user="user \"quoted\" ü", plan="pro",
    feature="code_review", run="TICKET-42", step="review", step_attempt=3, provider="anthropic",
    model_requested="tier:medium", model_used="claude-sonnet-4-5", input_tokens=12345,
    output_tokens=678, cached_tokens=1000, cache_write_tokens=200, reasoning_tokens=50,
    exact=False, cost_nusd=9_876_543_210_123, latency_ms=1234, ttft_ms=321,
    upstream_ms=1100, retries=1, error_code="context_length_exceeded", tokens_saved=7,
    trimmed_tokens=890, stream=True,
    detail='{"clamped_max_tokens": 2000}', content='{"messages": []}',
)


async def test_migrations_are_idempotent(ledger_url) -> None:
    first = await open_ledger(ledger_url)
    await first.write_batch([row(1)])
    await first.close()
    again = await open_ledger(ledger_url)  # re-applies nothing, keeps the data
    try:
        assert await again.schema_version() == LATEST
        versions = await again.query("SELECT version FROM schema_version ORDER BY version")
        assert [v for (v,) in versions] == [m.version for m in MIGRATIONS]
        assert await again.count() == 1
    finally:
        await again.close()


async def test_every_field_round_trips(store) -> None:
    minimal = CallRecord(request_id="req-min", ts=1.5, outcome=Outcome.REJECTED, status=429)
    await store.write_batch([FULL, minimal])
    got = await store.records()
    assert got == [minimal, FULL]  # ordered by ts
    assert await store.records(since=2.0) == [FULL]
    assert await store.records(until=2.0) == [minimal]


async def test_insert_is_idempotent_on_request_id(store) -> None:
    await store.write_batch([row(1), row(2)])
    await store.write_batch([row(1, input_tokens=999), row(2), row(3)])
    assert await store.count() == 3
    first = [r for r in await store.records() if r.request_id == "req-000001"]
    assert [r.input_tokens for r in first] == [1]  # first write wins


async def test_a_version_1_ledger_is_migrated_and_its_rows_still_read(ledger_url) -> None:
    """A ledger written before rows were keyed on request_id alone (version 1, with an
    `attempt` column) opens at the latest version with every row intact."""
    v1 = MIGRATIONS[0]
    values = ("req-old", 1.0, "ok", 200, 0, "k1", "u1", None, "chat", "R", "review", 2,
              "openai", "gpt-4o", "gpt-4o", 10, 5, 0, 0, 0, True, 77, 12, None, 0, None, 0,
              0, False, '{"clamp": {"to": 5}}', None)
    if ledger_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(ledger_url.removeprefix("sqlite:///"))
        for sql in v1.statements("sqlite"):
            conn.execute(sql)
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                     "description TEXT NOT NULL, applied_at REAL NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1, 'v1', 0)")
        conn.execute(f"INSERT INTO calls VALUES ({', '.join('?' * len(values))})", values)
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(ledger_url, autocommit=True) as conn:
            for sql in v1.statements("postgres"):
                conn.execute(sql)
            conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                         "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
            conn.execute("INSERT INTO schema_version VALUES (1, 'v1', 0)")
            conn.execute(f"INSERT INTO calls VALUES ({', '.join(['%s'] * len(values))})",
                         values)
    store = await open_ledger(ledger_url)
    try:
        assert await store.schema_version() == LATEST
        [old] = await store.records()
        assert (old.request_id, old.user, old.input_tokens, old.cost_nusd) == (
            "req-old", "u1", 10, 77)
        assert old.client_request_id is None and old.upstream_ms is None
        await store.write_batch([row(1), row(1, input_tokens=9)])  # keyed on request_id
        assert await store.count() == 2
    finally:
        await store.close()


async def test_batch_of_10k_rows(store) -> None:
    rows = [row(i) for i in range(10_000)]
    await store.write_batch(rows)
    await store.write_batch(rows[:5000])  # replay of half: ignored
    assert await store.count() == 10_000
    total = await store.query("SELECT SUM(input_tokens) FROM calls")
    assert int(total[0][0]) == sum(range(10_000))


async def test_writer_batches_and_drains_on_close(store, tmp_path) -> None:
    writer = LedgerWriter(store, journal_dir=tmp_path / "j", batch_size=100, interval=0.01)
    assert await writer.start() == 0
    for i in range(2500):
        writer.record(row(i))
    await writer.close()
    assert await store.count() == 2500
    assert writer.stats.written == 2500
    assert list((tmp_path / "j").glob("seg-*")) == []  # every committed segment deleted


async def test_record_from_another_thread(store, tmp_path) -> None:
    writer = LedgerWriter(store, journal_dir=tmp_path / "j", batch_size=10)
    await writer.start()
    t = threading.Thread(target=lambda: [writer.record(row(i)) for i in range(50)])
    t.start()
    t.join()
    await writer.flush()
    assert await store.count() == 50
    await writer.close()


async def test_content_is_not_stored_unless_asked(store, tmp_path) -> None:
    plain = LedgerWriter(store, journal_dir=tmp_path / "a", interval=3600, batch_size=10**9)
    await plain.start()
    plain.record(row(1, content='{"prompt": "secret"}'))
    journaled = b"".join(p.read_bytes() for p in (tmp_path / "a").glob("seg-*"))
    assert b"req-000001" in journaled and b"secret" not in journaled  # not even on disk
    await plain.close()
    logged = LedgerWriter(store, journal_dir=tmp_path / "b", log_content=True)
    await logged.start()
    logged.record(row(2, content='{"prompt": "kept"}'))
    await logged.close()
    got = {r.request_id: r.content for r in await store.records()}
    assert got == {"req-000001": None, "req-000002": '{"prompt": "kept"}'}


_CRASHER = """
import asyncio, os, signal, sys
from tallygate.ledger import LedgerWriter, open_ledger
from tallygate.types import CallRecord, Outcome

async def main(url, journal, n):
    store = await open_ledger(url)
    writer = LedgerWriter(store, journal_dir=journal, batch_size=10**9, interval=3600)
    await writer.start()
    for i in range(n):
        writer.record(CallRecord(request_id=f"crash-{i}", ts=float(i), outcome=Outcome.OK,
                                 status=200, input_tokens=i))
    print("recorded", flush=True)  # a client would have seen these succeed
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def _crash_after_recording(
    ledger_url: str, journal: Path, n: int
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CRASHER, ledger_url, str(journal), str(n)],
        check=False, capture_output=True, text=True, timeout=60,
    )


async def test_journal_replay_after_sigkill(ledger_url, tmp_path) -> None:
    journal = tmp_path / "journal"
    proc = await asyncio.to_thread(_crash_after_recording, ledger_url, journal, 1500)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "recorded"
    store = await open_ledger(ledger_url)
    try:
        assert await store.count() == 0  # nothing reached the database before the kill
        writer = LedgerWriter(store, journal_dir=journal)
        assert await writer.start() == 1500
        assert await store.count() == 1500
        assert list(journal.glob("seg-*")) == []
        await writer.close()
        again = LedgerWriter(store, journal_dir=journal)  # replaying twice is harmless
        assert await again.start() == 0
        await again.close()
    finally:
        await store.close()


async def test_replay_skips_a_torn_last_line_and_live_segments(store, tmp_path) -> None:
    journal = tmp_path / "j"
    live = LedgerWriter(store, journal_dir=journal, interval=3600, batch_size=10**9)
    await live.start()
    live.record(row(1))  # pending in a live writer's locked segment
    dead = journal / f"seg-999999-{os.getpid()}-1.jsonl"
    dead.write_bytes(to_line(row(2)) + to_line(row(3))[:-10])  # torn mid-write
    other = LedgerWriter(store, journal_dir=journal)
    assert await other.start() == 1  # row 2 only: not the torn row 3, not the live row 1
    assert [r.request_id for r in await store.records()] == ["req-000002"]
    await live.close()
    assert await store.count() == 2
    await other.close()


async def test_close_keeps_journal_when_store_is_down(ledger_url, tmp_path) -> None:
    journal = tmp_path / "j"
    store = await open_ledger(ledger_url)
    writer = LedgerWriter(store, journal_dir=journal, interval=3600, batch_size=10**9)
    await writer.start()
    writer.record(row(1))
    writer.record(row(2))
    await store.close()  # the database goes away before the drain
    with pytest.raises(Exception):  # noqa: B017 - backend-specific error
        await writer.close()
    assert len(list(journal.glob("seg-*"))) == 1
    store = await open_ledger(ledger_url)
    try:
        writer = LedgerWriter(store, journal_dir=journal)
        assert await writer.start() == 2
        await writer.close()
        assert await store.count() == 2
    finally:
        await store.close()


async def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown ledger URL scheme 'mysql'"):
        await open_ledger("mysql://x@y/z")
    with pytest.raises(ConfigError, match="no file path"):
        await open_ledger("sqlite:///")


async def test_memory_ledger_works_without_journal() -> None:
    store = await open_ledger("memory://")
    writer = LedgerWriter(store, journal_dir=None)
    await writer.start()
    writer.record(row(1))
    await writer.close()
    assert await store.count() == 1
    await store.close()


def test_journal_rejects_unknown_fsync_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fsync"):
        Journal(tmp_path, fsync="sometimes")


async def test_a_row_the_store_refuses_is_set_aside_and_the_rest_go_on(store, tmp_path) -> None:
    """An integer past int64 once stopped every later row and the next start's replay."""
    journal = tmp_path / "j"
    writer = LedgerWriter(store, journal_dir=journal, batch_size=100, interval=10)
    await writer.start()
    writer.record(row(1))
    writer.record(row(2, step_attempt=2**63))  # past what the store can hold
    writer.record(row(3))
    await writer.flush()
    await writer.close()
    assert sorted(r.request_id for r in await store.records()) == ["req-000001", "req-000003"]
    assert writer.stats.rejected == 1
    [kept] = journal.glob("rejected-*.jsonl")
    assert b"req-000002" in kept.read_bytes()


async def test_a_refused_row_in_a_dead_writers_journal_does_not_stop_the_replay(
        store, tmp_path) -> None:
    journal = Journal(tmp_path / "j")
    for r in (row(1), row(2, step_attempt=2**63), row(3)):
        journal.append(to_line(r))
    seg = journal.cut()
    assert seg is not None
    os.close(seg.fd)  # the writer "died": its lock is gone, its segment is an orphan
    writer = LedgerWriter(store, journal_dir=tmp_path / "j")
    assert await writer.start() == 3
    await writer.close()
    assert await store.count() == 2


async def test_a_row_json_cannot_hold_is_set_aside_at_record(store, tmp_path) -> None:
    writer = LedgerWriter(store, journal_dir=tmp_path / "j")
    await writer.start()
    writer.record(row(1, step_attempt=2**64))  # never raises into the call it records
    writer.record(row(2))
    await writer.close()
    assert [r.request_id for r in await store.records()] == ["req-000002"]
    assert writer.stats.rejected == 1
