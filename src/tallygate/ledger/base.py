"""The ledger: one row per call attempt, and the writer that records rows off the request path.

`LedgerStore` is what a backend implements (SQLite, PostgreSQL). `LedgerWriter` is what the
request path uses: `record(row)` is synchronous, O(1) and never awaits the database.

Durability contract of `LedgerWriter` (details in docs/ledger.md):
1. `record(row)` appends the row as one line to a local journal segment with one write(2)
   *before it returns*; call it before sending the response. From then on the row survives
   the death of the process (SIGKILL, crash, OOM kill): the bytes are in the kernel's page
   cache and the next writer started on the same journal directory replays them.
2. Rows are inserted in batches (every `batch_size` rows or `interval` seconds) in one
   transaction each, idempotent on request_id; a segment is deleted only after
   every row in it is committed. A failed insert is retried with back-off; rows stay in
   memory and in the journal meanwhile.
3. `start()` replays segments left by dead writers before anything else. Replaying a row that
   was already committed is a no-op (ON CONFLICT DO NOTHING / INSERT OR IGNORE).
4. Power loss / kernel crash: governed by the journal's fsync policy ("never" by default:
   the last seconds may be lost; "batch": at most one flush interval; "always": nothing, at
   the cost of one fsync per call).
5. Without a journal directory (`journal_dir=None`, e.g. memory://) rows only live in memory
   until inserted: nothing survives a process kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from os import PathLike
from typing import Any, Protocol, runtime_checkable

from tallygate.ledger.journal import Journal, Segment
from tallygate.ledger.migrations import Dialect
from tallygate.ledger.rows import to_line
from tallygate.types import CallRecord

log = logging.getLogger("tallygate.ledger")

_MAX_TX_ROWS = 5000  # rows per insert transaction when a backlog is drained


@runtime_checkable
class LedgerStore(Protocol):
    """A ledger backend. Every method is a coroutine that never blocks the event loop."""

    dialect: Dialect
    url: str

    async def write_batch(self, rows: Sequence[CallRecord]) -> None:
        """Insert rows in one transaction; a row whose request_id is already stored is
        ignored (idempotent replays)."""
        ...

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SELECT written with `?` placeholders (translated per dialect)."""
        ...

    async def records(
        self, *, since: float | None = None, until: float | None = None
    ) -> list[CallRecord]:
        """Stored rows with since <= ts < until, in (ts, request_id) order."""
        ...

    async def count(self) -> int: ...

    async def schema_version(self) -> int: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class WriterStats:
    recorded: int = 0
    written: int = 0
    replayed: int = 0
    failures: int = 0


class LedgerWriter:
    """Background batching writer with a crash-safe local journal (see module docstring)."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        journal_dir: str | PathLike[str] | None,
        batch_size: int = 200,
        interval: float = 0.05,
        fsync: str = "never",
        log_content: bool = False,
    ) -> None:
        self.store = store
        self.batch_size = max(1, batch_size)
        self.interval = interval
        self.log_content = log_content
        self.stats = WriterStats()
        self._journal = Journal(journal_dir, fsync) if journal_dir is not None else None
        self._buffer: list[CallRecord] = []
        self._batches: deque[tuple[Segment | None, list[CallRecord]]] = deque()
        self._lock = threading.Lock()  # record() may be called from other threads
        self._flush_lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> int:
        """Replay rows left by dead writers, then start batching. Returns rows replayed."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        replayed = await self._replay()
        self._task = asyncio.create_task(self._run(), name="tallygate-ledger-writer")
        return replayed

    def record(self, row: CallRecord) -> None:
        """Journal the row now (one write(2)), insert it later. Never awaits."""
        if self._closed:
            raise RuntimeError("LedgerWriter.record() after close()")
        if not self.log_content and row.content is not None:
            row = replace(row, content=None)
        with self._lock:
            if self._journal is not None:
                self._journal.append(to_line(row))
            self._buffer.append(row)
            full = len(self._buffer) >= self.batch_size
            self.stats.recorded += 1
        if full:
            self._signal()

    @property
    def pending(self) -> int:
        """Rows recorded but not yet committed to the store."""
        with self._lock:
            return len(self._buffer) + sum(len(rows) for _, rows in self._batches)

    async def flush(self) -> None:
        """Commit every row recorded so far (raises if the store fails)."""
        assert self._flush_lock is not None, "LedgerWriter.start() was not awaited"
        async with self._flush_lock:
            self._cut()
            while self._batches:
                seg, rows = self._batches[0]
                for i in range(0, len(rows), _MAX_TX_ROWS):
                    await self.store.write_batch(rows[i : i + _MAX_TX_ROWS])
                self._batches.popleft()
                self.stats.written += len(rows)
                if seg is not None:
                    Journal.commit(seg)

    async def close(self) -> None:
        """Stop the background task and drain everything to the store. If the store is
        down the rows stay in the journal for the next start (and the error is raised)."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            if self._flush_lock is not None:
                await self.flush()
        finally:
            self._release_journal()

    def _cut(self) -> None:
        with self._lock:
            if not self._buffer:
                return
            seg = self._journal.cut() if self._journal is not None else None
            self._batches.append((seg, self._buffer))
            self._buffer = []

    def _signal(self) -> None:
        if self._wake is None or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        backoff = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval + backoff)
            self._wake.clear()
            try:
                await self.flush()
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: keep rows, retry later
                self.stats.failures += 1
                backoff = min(5.0, max(0.1, backoff * 2))
                log.warning("ledger insert failed (retrying in %.1fs): %s", backoff, exc)

    async def _replay(self) -> int:
        if self._journal is None:
            return 0
        total = 0
        for seg in self._journal.orphans():
            rows = Journal.read(seg.path)
            for i in range(0, len(rows), _MAX_TX_ROWS):
                await self.store.write_batch(rows[i : i + _MAX_TX_ROWS])
            Journal.commit(seg)
            total += len(rows)
        self.stats.replayed += total
        if total:
            log.info("ledger: replayed %d journaled rows", total)
        return total

    def _release_journal(self) -> None:
        """Release locks without deleting uncommitted segments (replayed at next start)."""
        if self._journal is None:
            return
        with self._lock:
            for seg, _ in self._batches:
                if seg is not None:
                    os.close(seg.fd)
            self._batches.clear()
            self._journal.close()
