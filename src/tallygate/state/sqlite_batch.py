"""Group commit for the SQLite state store.

One worker thread owns the connection. Operations queued while it was busy are run
together in ONE `BEGIN IMMEDIATE … COMMIT`, each inside its own SAVEPOINT so a failing
operation rolls back alone. Results are handed back only after the COMMIT, so nothing
a caller sees can be lost, and the write lock is still taken up front (two processes
never both see the same room). Under concurrency this turns N commits into one."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")
MAX_BATCH = 256
# Above this rate (operations per second, judged over the previous 10 ms) batching in
# the worker thread wins: one commit for many, and the SQL runs off the event loop.
BUSY_RATE = 3000
_TICK = 0.01
# The event loop's connection never checkpoints (copying the WAL back into the file
# and syncing takes milliseconds): every this many of its commits the worker does. A
# PASSIVE checkpoint blocks nobody; if the loop's transactions kept overlapping them so
# the WAL could never start over and it grew past RESTART_FRAMES, a RESTART one (writers
# wait for it, briefly) makes the next writer reuse the WAL from its start.
CHECKPOINT_EVERY = 256
RESTART_FRAMES = 16_384  # 64 MiB of 4 KiB pages
Work = Callable[[sqlite3.Connection], Any]
_Item = tuple[Work, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
_STOP = object()
_CHECKPOINT = object()


class BatchWorker:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        name: str,
        *,
        inline: Callable[[], sqlite3.Connection] | None = None,
    ) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()
        # Fast path: a second connection with busy_timeout 0, used on the event loop when
        # nothing is queued. Taking the write lock either succeeds at once or fails at
        # once (then the operation goes to the worker), so the loop never waits on a
        # lock; it saves the two thread hand-offs, which cost more than a small
        # transaction (WAL, synchronous=NORMAL: no fsync on commit).
        self._inline_connect = inline
        self._inline_db: sqlite3.Connection | None = None
        self._pending = 0
        self._window = (0.0, 0, 0)  # (start, operations in it, operations in the last one)
        self._inline_commits = 0

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._inline_connect is not None and self._pending == 0 and not self._busy():
            done, result = self._try_inline(work)
            if done:
                return cast(T, result)
        self._pending += 1
        try:
            return await self._queued(work)
        finally:
            self._pending -= 1

    def _busy(self) -> bool:
        now = time.perf_counter()
        start, ops, previous = self._window
        if now - start >= _TICK:
            start, previous, ops = now, ops if now - start < 2 * _TICK else 0, 0
        self._window = (start, ops + 1, previous)
        return previous > BUSY_RATE * _TICK

    def _try_inline(self, work: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        if self._inline_db is None:
            assert self._inline_connect is not None
            try:
                self._inline_db = self._inline_connect()
            except sqlite3.OperationalError:  # e.g. locked while creating: next time
                return False, None
        db = self._inline_db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # locked by another writer: use the worker
            return False, None
        try:
            result = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.OperationalError:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return False, None
        self._inline_commits += 1
        if self._inline_commits % CHECKPOINT_EVERY == 0:
            self._start()
            self._queue.put(_CHECKPOINT)
        return True, result

    def _start(self) -> None:
        if not self._started:
            with self._lock:
                if not self._started:
                    self._thread.start()
                    self._started = True

    async def _queued(self, work: Callable[[sqlite3.Connection], T]) -> T:
        self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((work, loop, future))
        return await future

    def close(self) -> None:
        if self._started:
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
        if self._inline_db is not None:
            self._inline_db.close()
            self._inline_db = None

    # ---------------------------------------------------------------- worker thread

    def _loop(self) -> None:
        db: sqlite3.Connection | None = None
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, checkpoint, stop = self._drain(first)
            try:
                if db is None:
                    db = self._connect()
                if batch:
                    self._commit(db, batch)
            except BaseException as exc:  # the whole batch failed: tell every caller
                for _, loop, future in batch:
                    _hand_back(loop, future, None, exc)
            if checkpoint and db is not None:
                _checkpoint(db)
            if stop:
                break
        if db is not None:
            db.close()

    def _drain(self, first: Any) -> tuple[list[_Item], bool, bool]:
        """`first` and whatever else is queued: (operations, checkpoint asked, stop)."""
        batch: list[_Item] = []
        checkpoint = False
        item = first
        while True:
            if item is _STOP:
                return batch, checkpoint, True
            if item is _CHECKPOINT:
                checkpoint = True
            else:
                batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, checkpoint, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, checkpoint, False

    @staticmethod
    def _commit(db: sqlite3.Connection, batch: list[_Item]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for work, _, _ in batch:
                db.execute("SAVEPOINT op")
                try:
                    result = work(db)
                except Exception as exc:  # this operation alone is rolled back
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    outcomes.append((None, exc))
                else:
                    db.execute("RELEASE op")
                    outcomes.append((result, None))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        for (result, error), (_, loop, future) in zip(outcomes, batch, strict=True):
            _hand_back(loop, future, result, error)


def _checkpoint(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # busy: the next one catches up
        [(_, frames, _)] = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        if frames > RESTART_FRAMES:
            db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


def _hand_back(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any,
               exc: BaseException | None) -> None:
    def settle() -> None:
        if future.done():  # the caller was cancelled meanwhile
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(settle)
