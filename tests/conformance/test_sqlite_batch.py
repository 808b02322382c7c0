"""Group commit and the inline fast path of the SQLite state store's worker."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from tallygate.state.sqlite_batch import BatchWorker


def _connector(path: Path, busy_ms: int):
    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {busy_ms}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)")
        return db

    return connect


def _insert(key: str, value: int):
    def work(db: sqlite3.Connection) -> str:
        db.execute("INSERT INTO t VALUES (?, ?)", (key, value))
        if value < 0:
            raise ValueError("negative")
        return key

    return work


def _rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT k, v FROM t").fetchall())


async def test_a_failing_operation_rolls_back_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    worker = BatchWorker(_connector(path, 5000), "test")  # no inline path: all batched
    results = await asyncio.gather(
        *(worker.run(_insert(f"k{i}", -1 if i == 3 else i)) for i in range(8)),
        return_exceptions=True,
    )
    worker.close()
    assert isinstance(results[3], ValueError)
    assert [r for i, r in enumerate(results) if i != 3] == [f"k{i}" for i in range(8) if i != 3]
    assert _rows(path) == {f"k{i}": i for i in range(8) if i != 3}


async def test_inline_never_waits_on_a_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    connect = _connector(path, 5000)
    connect().close()  # schema in place

    def inline() -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 0")
        return db

    worker = BatchWorker(connect, "test", inline=inline)
    assert await worker.run(_insert("free", 1)) == "free"  # inline, lock free
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    ticks = 0
    ticked = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks >= 10:
                ticked.set()

    tick_task = asyncio.create_task(ticker())
    pending = asyncio.create_task(worker.run(_insert("later", 2)))
    await ticked.wait()  # the loop keeps running while the worker waits on the lock
    assert not pending.done()
    blocker.execute("COMMIT")
    blocker.close()
    assert await asyncio.wait_for(pending, 5) == "later"
    tick_task.cancel()
    worker.close()
    assert _rows(path) == {"free": 1, "later": 2}


@pytest.mark.parametrize("inline", [False, True])
async def test_results_only_after_commit(tmp_path: Path, inline: bool) -> None:
    path = tmp_path / "s.db"
    connect = _connector(path, 5000)
    connect().close()
    worker = BatchWorker(connect, "test", inline=connect if inline else None)
    started = time.perf_counter()
    await asyncio.gather(*(worker.run(_insert(f"r{i}", i)) for i in range(50)))
    worker.close()
    assert time.perf_counter() - started < 30
    assert len(_rows(path)) == 50  # every caller told "done" finds its row committed


async def _worker_idle(worker: BatchWorker) -> None:
    """Wait until the worker has run everything queued, its checkpoint included: a batch's
    callers are answered before its checkpoint runs, so the second no-op (queued after
    the first was answered) is taken only once that checkpoint is done. No sleeps: the
    same on an idle machine and a loaded one."""
    for _ in range(2):
        await worker._queued(lambda db: None)


@pytest.mark.parametrize("restart_frames", [16_384, 0])
async def test_the_worker_checkpoints_for_the_inline_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restart_frames: int) -> None:
    """The loop's connection never checkpoints (autocheckpoint off); every
    CHECKPOINT_EVERY of its commits the worker thread does (PASSIVE, or RESTART past
    RESTART_FRAMES), so the WAL stays short."""
    import tallygate.state.sqlite_batch as batch

    monkeypatch.setattr(batch, "CHECKPOINT_EVERY", 8)
    monkeypatch.setattr(batch, "RESTART_FRAMES", restart_frames)
    path = tmp_path / "s.db"
    connect = _connector(path, 5000)
    connect().close()

    def inline() -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA wal_autocheckpoint = 0")
        return db

    worker = BatchWorker(connect, "test", inline=inline)
    worker._busy = lambda: False  # type: ignore[method-assign]  # always inline
    blob = "x" * 3000  # about one page per commit
    for i in range(64):
        await worker.run(_insert(f"{blob}{i}", i))
        if (i + 1) % 8 == 0:  # a checkpoint was queued: let it run before the next commit,
            await _worker_idle(worker)  # as a quiet moment between requests would
    wal = (tmp_path / "s.db-wal").stat().st_size
    worker.close()
    # Without the worker's checkpoints the WAL holds all 64 commits (~385 pages here);
    # with them it is reused every 8 commits (~50 pages).
    assert wal < 100 * 4096
    assert len(_rows(path)) == 64
