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
6. `record()` never fails the call it records: if the journal cannot be written (disk
   full), the row stays in memory until inserted (a kill meanwhile loses it), the
   segment is cut so its torn tail is its last line, and the next rows try again.
7. A row the store refuses as data (a value out of range) is moved aside — appended to
   `rejected-<pid>.jsonl` in the journal directory and logged — so one bad row never
   stops the rows after it, nor a restart's replay. An outage (the store unreachable,
   the disk full) is retried: nothing is set aside for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from os import PathLike
from pathlib import Path
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
    journal_failures: int = 0  # rows kept in memory only: the journal could not be written
    rejected: int = 0  # rows the store refused as data, set aside


# Exceptions (or their bases) that mean "this row's data", not "the store is down".
_DATA_ERRORS = frozenset({"OverflowError", "ValueError", "TypeError", "DataError",
                          "IntegrityError", "InterfaceError", "ProgrammingError"})


def is_data_error(exc: BaseException) -> bool:
    """The store refused the rows themselves (sqlite3's OverflowError for an int64 past
    range, psycopg's DataError family …), as opposed to an outage."""
    return any(cls.__name__ in _DATA_ERRORS for cls in type(exc).__mro__)


Quarantine = Callable[[CallRecord, BaseException], None]


async def write_rows(store: LedgerStore, rows: Sequence[CallRecord],
                     quarantine: Quarantine) -> None:
    """Insert rows in transactions of at most _MAX_TX_ROWS; when the store refuses a
    transaction as data, insert its rows one by one and set aside those it refuses."""
    for i in range(0, len(rows), _MAX_TX_ROWS):
        chunk = rows[i : i + _MAX_TX_ROWS]
        try:
            await store.write_batch(chunk)
            continue
        except Exception as exc:
            if not is_data_error(exc):
                raise
        for row in chunk:
            try:
                await store.write_batch([row])
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                quarantine(row, exc)


def _is_dir(path: str | PathLike[str]) -> bool:
    return os.path.isdir(path)  # one stat(2): not worth a thread


def set_aside(journal_dir: Path | None) -> Quarantine:
    """A quarantine that appends refused rows to `rejected-<pid>.jsonl` and logs them."""

    def keep(row: CallRecord, exc: BaseException) -> None:
        log.error("ledger: row %s refused by the store (%s: %s); set aside", row.request_id,
                  type(exc).__name__, exc)
        if journal_dir is None:
            return
        try:
            with open(journal_dir / f"rejected-{os.getpid()}.jsonl", "ab") as fh:
                # json, not orjson: it writes any int, even one no store can hold.
                fh.write(json.dumps(asdict(row), default=str).encode() + b"\n")
        except OSError:
            log.exception("ledger: cannot keep the refused row %s", row.request_id)

    return keep


async def replay_orphans(store: LedgerStore, journal_dir: str | PathLike[str] | None) -> int:
    """Insert the rows of segments no live writer holds (a process that died: SIGKILL,
    os._exit, SIGTERM without handler) and delete them. Returns the rows replayed. Safe
    beside live writers; a row already stored is ignored."""
    if journal_dir is None or not _is_dir(journal_dir):
        return 0
    journal = Journal(journal_dir)
    quarantine = set_aside(Path(journal_dir))
    total = 0
    try:
        for seg in journal.orphans():
            rows = Journal.read(seg.path)
            await write_rows(store, rows, quarantine)
            Journal.commit(seg)
            total += len(rows)
    finally:
        journal.close()
    if total:
        log.info("ledger: replayed %d journaled rows", total)
    return total


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
        self._journal_warned = float("-inf")

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
        try:
            line = to_line(row)
        except TypeError as exc:  # a value JSON cannot hold: no store could either
            self._quarantine(row, exc)
            return
        with self._lock:
            if self._journal is not None:
                try:
                    self._journal.append(line)
                except OSError as exc:  # disk full: keep the row in memory (contract 6)
                    self._journal_failed(exc)
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
                await write_rows(self.store, rows, self._quarantine)
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
        total = await replay_orphans(self.store, self._journal.directory)
        self.stats.replayed += total
        return total

    def _quarantine(self, row: CallRecord, exc: BaseException) -> None:
        self.stats.rejected += 1
        set_aside(self._journal.directory if self._journal is not None else None)(row, exc)

    def _journal_failed(self, exc: OSError) -> None:
        """Called with the lock held: cut the segment (its torn tail stays its last line,
        which readers skip) and hand what it holds to the next flush."""
        self.stats.journal_failures += 1
        now = time.monotonic()
        if now - self._journal_warned > 10:
            self._journal_warned = now
            log.warning("ledger journal not writable (%s): rows are kept in memory until "
                        "inserted", exc)
        assert self._journal is not None
        seg = self._journal.cut()
        if self._buffer:
            self._batches.append((seg, self._buffer))
            self._buffer = []
        elif seg is not None:
            Journal.commit(seg)

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
