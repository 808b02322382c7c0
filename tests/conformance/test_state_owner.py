"""SQLite owner mode beyond the shared conformance suite (test_state.py runs that on it
too): who may open the file, crash recovery (in process and by SIGKILL), failures of the
journal and of snapshots, and switching modes on one file."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tallygate.core.windows import counter_name
from tallygate.errors import ConfigError, InvalidRequest, StoreUnavailable
from tallygate.state import from_url
from tallygate.state.sqlite_owner import OwnedSqliteStore, journal_dir
from tallygate.types import Hold, Window
from tests.support.state import abandon

T0 = 1_718_000_000.0


def tokens(key: str, amount: int, limit: int = 1000) -> Hold:
    return Hold(key=key, amount=amount, limit=limit, window=Window.DAY)


def owner(path: Path, **opts: float) -> OwnedSqliteStore:
    store = from_url(f"sqlite:///{path}", owner=True, **opts)
    assert isinstance(store, OwnedSqliteStore)
    return store


async def used_reserved(store: object, key: str, now: float = T0) -> tuple[int, int]:
    u = await store.usage(key, limit=1000, window=Window.DAY, now=now)  # type: ignore[attr-defined]
    return u.used, u.reserved


def segments(path: Path) -> list[Path]:
    return sorted(journal_dir(str(path)).glob("seg-*.jsonl"))


async def test_one_owner_and_no_sharer_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = owner(path)
    with pytest.raises(ConfigError, match="in use by another process"):
        owner(path)
    shared = from_url(f"sqlite:///{path}")
    await shared.set_flag("kill", True)  # flags stay shared: the CLI can set them
    assert await first.get_flag("kill") is True
    with pytest.raises(StoreUnavailable, match=f"owned by process {os.getpid()}"):
        await shared.usage("k", limit=10, window=Window.DAY, now=T0)
    await shared.close()
    await first.close()
    # A sharer holding the file keeps an owner out, until it closes.
    shared = from_url(f"sqlite:///{path}")
    await shared.reserve("s", [tokens("k", 5)], lease=60, now=T0)
    with pytest.raises(ConfigError, match="state_mode: shared"):
        owner(path)
    await shared.close()
    again = owner(path)
    assert await used_reserved(again, "k") == (0, 5)
    await again.close()


async def test_switching_modes_keeps_every_amount(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    shared = from_url(f"sqlite:///{path}")
    await shared.reserve("a", [tokens("k", 100)], lease=60, now=T0)
    await shared.reserve("b", [tokens("k", 200)], lease=60, now=T0)
    await shared.settle("a", {"tokens": 40}, now=T0)
    await shared.close()

    store = owner(path)
    assert await used_reserved(store, "k") == (40, 200)
    assert (await store.settle("a", {"tokens": 1}, now=T0)).already_settled
    with pytest.raises(InvalidRequest, match="already settled"):
        await store.reserve("a", [tokens("k", 1)], lease=60, now=T0)
    await store.settle("b", {"tokens": 150}, now=T0)
    await store.reserve("c", [tokens("k", 300)], lease=60, now=T0)
    await store.close()
    assert segments(path) == []  # a clean close leaves no journal

    shared = from_url(f"sqlite:///{path}")
    assert await used_reserved(shared, "k") == (190, 300)
    await shared.release("c", now=T0)
    assert await used_reserved(shared, "k") == (190, 0)
    await shared.close()


async def test_a_crash_loses_nothing_the_journal_has(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = owner(path, flush_seconds=3600)  # no snapshot: everything is in the journal
    for i in range(50):
        await store.reserve(f"r{i}", [tokens("k", 10)], lease=60, now=T0)
        if i % 2:
            await store.settle(f"r{i}", {"tokens": 7}, now=T0)
    await abandon(store)
    assert segments(path)

    again = owner(path)
    assert await used_reserved(again, "k") == (25 * 7, 25 * 10)
    assert segments(path) == []  # replayed, written, deleted
    assert (await again.settle("r1", {"tokens": 7}, now=T0)).already_settled
    await again.settle("r0", {"tokens": 3}, now=T0)
    assert await used_reserved(again, "k") == (25 * 7 + 3, 24 * 10)
    await again.close()


async def test_replay_keeps_reclaims_made_by_reads(tmp_path: Path) -> None:
    """Concurrent requests reach the store slightly out of time order: a read at t=10
    reclaims an expired lease that a reservation stamped t=3 then relies on. Replay must
    reclaim it at the same point, or it would refuse what was admitted."""
    path = tmp_path / "state.db"
    store = owner(path, flush_seconds=3600)
    await store.reserve("old", [tokens("k", 900)], lease=5, now=T0)
    assert await used_reserved(store, "k", now=T0 + 10) == (0, 0)  # reclaimed here
    assert await store.reserve("new", [tokens("k", 500)], lease=60, now=T0 + 3) is None
    await abandon(store)

    again = owner(path)
    assert await used_reserved(again, "k", now=T0 + 3) == (0, 500)
    assert (await again.settle("new", {"tokens": 450}, now=T0 + 4)).charged == {"k": 450}
    await again.close()


async def test_finished_rows_leave_memory_once_written(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = owner(path, flush_seconds=0.001)
    await store.reserve("a", [tokens("k", 10)], lease=60, now=T0)
    await store.settle("a", {"tokens": 9}, now=T0)
    await store.reserve("held", [tokens("k", 20)], lease=60, now=T0)
    await store.written()
    assert set(store.in_memory[0]) == {"held"}
    assert (await store.settle("a", {"tokens": 9}, now=T0)).already_settled
    with pytest.raises(InvalidRequest, match="already settled"):
        await store.reserve("a", [tokens("k", 1)], lease=60, now=T0)
    # The tables are current: what `report budgets` reads once the gateway stops.
    db = sqlite3.connect(path)
    cell = db.execute("SELECT used, reserved FROM state_cells WHERE counter = ?",
                      (counter_name("k", Window.DAY, False),)).fetchone()
    states = dict(db.execute("SELECT rid, state FROM state_holds").fetchall())
    db.close()
    assert cell == (9, 20) and states == {"a": "settled", "held": "held"}
    await store.close()


async def test_a_failed_snapshot_is_retried_and_the_journal_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    store = owner(path, flush_seconds=0.001, busy_timeout=0.05)
    # Another client of the file holds its write lock: the snapshot's write gives up
    # after busy_timeout ("database is locked"), as it would on a disk I/O error.
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with caplog.at_level(logging.ERROR, logger="tallygate.state"):
        await store.reserve("a", [tokens("k", 10)], lease=60, now=T0)
        await store.written()  # returns once a snapshot has failed
    assert "snapshot failed" in caplog.text
    assert segments(path)  # still there: the rows are not in SQLite
    blocker.execute("ROLLBACK")
    blocker.close()
    await store.settle("a", {"tokens": 4}, now=T0)
    await store.written()
    assert segments(path) == []
    await abandon(store)
    again = owner(path)
    assert await used_reserved(again, "k") == (4, 0)
    await again.close()


async def test_an_unwritable_journal_fails_closed_then_heals(tmp_path: Path) -> None:
    """The journal cannot be written (here its directory goes away, as when the volume
    under it does; a full disk fails the same write): reservations are refused (429
    store_unavailable), finishes still give their room back; once the journal takes
    writes again the store answers, no restart."""
    path = tmp_path / "state.db"
    store = owner(path)
    await store.reserve("a", [tokens("k", 10)], lease=60, now=T0)
    await store.written()  # the segment is cut: the next line opens a new one
    journal = journal_dir(str(path))
    away = journal.rename(tmp_path / "journal-away")
    with pytest.raises(StoreUnavailable, match="journal cannot be written"):
        await store.reserve("b", [tokens("k", 1)], lease=60, now=T0)
    await store.settle("a", {"tokens": 5}, now=T0)  # applied: room comes back
    assert await used_reserved(store, "k") == (5, 0)  # "b" was never granted
    with pytest.raises(StoreUnavailable):  # and stays so while the journal is gone
        await store.reserve("c", [tokens("k", 1)], lease=60, now=T0)
    away.rename(journal)  # the volume is back
    for _ in range(100):
        await asyncio.sleep(0.05)
        try:
            assert await store.reserve("d", [tokens("k", 1)], lease=60, now=T0) is None
            break
        except StoreUnavailable:
            continue
    else:
        raise AssertionError("the store did not heal")
    await store.close()
    again = owner(path)
    assert await used_reserved(again, "k") == (5, 1)  # the settle and "d" survived
    await again.close()


def test_in_memory_path_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a state file"):
        from_url("sqlite:///:memory:", owner=True)


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from tallygate.state import from_url
    from tallygate.types import Hold, Window

    async def main() -> None:
        store = from_url(f"sqlite:///{sys.argv[1]}", owner=True, flush_seconds=0.005)
        hold = [Hold("k", 10, 10**9, Window.DAY)]
        i = 0
        while True:
            i += 1
            await store.reserve(f"r{i}", hold, lease=600, now=1_718_000_000.0)
            await store.settle(f"r{i}", {"tokens": 7}, now=1_718_000_000.0)
            print(i, flush=True)  # acknowledged: settled in the store
            if i % 50 == 0:
                await asyncio.sleep(0.002)  # let snapshots run mid-stream

    asyncio.run(main())
""")


@pytest.mark.parametrize("acks", [150, 900])
def test_sigkill_keeps_every_acknowledged_settlement(tmp_path: Path, acks: int) -> None:
    path = tmp_path / "state.db"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    last = 0
    try:
        for line in child.stdout:
            last = int(line)
            if last >= acks:
                break
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        # The child ran on while we read: its last acknowledgment is the last line it
        # printed before the kill, still in the pipe.
        for line in child.stdout:
            last = int(line)
    finally:
        if child.poll() is None:
            child.kill()
    assert last >= acks, child.stderr.read().decode() if child.stderr else ""

    async def reopened() -> tuple[int, int]:
        store = owner(path)
        found = await used_reserved(store, "k")
        await store.close()
        return found

    used, reserved = asyncio.run(reopened())
    # Every acknowledged pair is there; at most one more settled (its line not yet
    # printed) and one more held past it.
    assert 7 * last <= used <= 7 * (last + 1), (used, last)
    assert reserved in (0, 10)


async def asyncio_sleep() -> None:
    await asyncio.sleep(0.002)


async def test_windows_nobody_touches_again_leave_memory_and_the_file(tmp_path: Path
                                                                       ) -> None:
    path = tmp_path / "state.db"
    store = owner(path, flush_seconds=0.001)
    for user in ("gone1", "gone2"):
        await store.reserve(user, [tokens(f"user:{user}", 10)], lease=60, now=T0)
        await store.settle(user, {"tokens": 10}, now=T0)
    await store.reserve("today", [tokens("user:back", 10)], lease=60, now=T0 + 2 * 86400)
    await store.written()
    assert store.in_memory[1] == [counter_name("user:back", Window.DAY, False)]
    db = sqlite3.connect(path)
    counters = {c for (c,) in db.execute("SELECT counter FROM state_cells")}
    db.close()
    assert counters == {counter_name("user:back", Window.DAY, False)}
    await store.close()


async def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(ConfigError, match="state store"):
        owner(path)
    path.unlink()
    await owner(path).close()  # the lock was let go: a good file opens at once
