"""SQLite state in owner mode: one process keeps the limit tables in memory.

The shared mode (state/sqlite.py) pays two SQLite write transactions per call (≈0.12 ms
together on this machine). A gateway that is the only process using its state file does
not need them: the owner holds the file's lock alone (state/file_lock.py), decides every
operation in memory (state/owner_book.py, the same layout as SQLite's) and makes it durable
by appending one line to a journal (ledger/journal.py's segments: one write(2), like the
ledger; safe once it returns, against a crash of the process, as a commit with
synchronous=NORMAL is). About once a second the changed rows are written to the SQLite
tables in a thread and the journal segments they cover are deleted.

Opening replays whatever segments a dead owner left on top of the tables: the operations
are deterministic given their arguments (time included), and idempotent per request id,
so a segment replayed on a snapshot that already holds it changes nothing.

Flags and claims are not hot: they stay in SQLite (a SqliteStore on the same file), so the
CLI can still set flags while the gateway runs. Anything else that wants the limits (a
second gateway, the library, `report budgets` without --url) is refused with a clear
error instead of silently diverging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from tallygate.errors import ConfigError, InvalidRequest, StoreUnavailable
from tallygate.ledger.bulk import insert_rows
from tallygate.ledger.journal import Journal, Segment
from tallygate.state.base import RUN_TTL
from tallygate.state.checks import check_extend, check_finish, check_holds, check_usage_args
from tallygate.state.file_lock import release, take_owner
from tallygate.state.owner_book import HELD, Book, Dirty
from tallygate.state.read_along import PlainFromRead
from tallygate.state.seen_ids import SeenIdsLoader
from tallygate.state.sqlite import RETENTION, SqliteStore, connect_state
from tallygate.types import Denial, Hold, LimitUsage, Metric, NotHeld, SettleResult, Window

log = logging.getLogger("tallygate.state")
FLUSH_SECONDS = 1.0  # how stale the SQLite tables may be (the journal is never stale)
HEAL_SECONDS = 1.0  # how often a broken journal is tried again
SEEN_SLICE = 512  # finished ids added to the Bloom filter per loop step (≈1 ms)

_CELLS = ("INSERT INTO state_cells (counter, wid, used, reserved)",
          " ON CONFLICT (counter, wid) DO UPDATE SET used = excluded.used, "
          "reserved = excluded.reserved")
_HOLDS = ("INSERT INTO state_holds (rid, state, live, expires, lines)",
          " ON CONFLICT (rid) DO UPDATE SET state = excluded.state, live = excluded.live, "
          "expires = excluded.expires, lines = excluded.lines")
_RUNS = ("INSERT INTO state_runs (counter, touched)",
         " ON CONFLICT (counter) DO UPDATE SET touched = excluded.touched")


def journal_dir(path: str) -> Path:
    return Path(path + ".state-journal")


class OwnedSqliteStore(PlainFromRead):
    """StateStore for the one process that owns a SQLite state file."""

    def __init__(self, path: str, *, busy_timeout: float = 10.0,
                 retention: float = RETENTION, flush_seconds: float = FLUSH_SECONDS,
                 run_ttl: float = RUN_TTL) -> None:
        if path == ":memory:":
            raise ConfigError("owner mode needs a state file (sqlite:///PATH), not :memory:")
        self._path = path
        self._retention = retention
        self._flush_seconds = flush_seconds
        self._lock: int | None = take_owner(path)  # fails fast: before anything is read
        self._broken: str | None = None
        self._healing: asyncio.Task[None] | None = None
        self._healed_at = float("-inf")
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._unwritten: list[Segment] = []  # cut segments whose rows are not in SQLite yet
        self._closing = False
        # The latest time an operation was given: forgetting finished rows is judged by
        # the callers' clock, as in the shared mode, never by this machine's.
        self._now = 0.0
        opened: list[sqlite3.Connection | SeenIdsLoader] = []
        try:
            busy_ms = int(busy_timeout * 1000)
            self._db = connect_state(path, busy_ms)  # snapshots (one thread at a time)
            opened.append(self._db)
            # Ids of finished reservations, read in a thread (exact lookups until then).
            self._seen = SeenIdsLoader(path)
            opened.append(self._seen)
            self._reader = sqlite3.connect(path, isolation_level=None,
                                           check_same_thread=False)
            opened.append(self._reader)
            self._flags = SqliteStore(path, busy_timeout=busy_timeout, retention=retention)
            self._book = Book(self._finished_state, run_ttl=run_ttl)
            self._journal = Journal(journal_dir(path), what="state journal")
            self._recover()
        except BaseException as exc:
            for handle in opened:
                handle.close()
            release(self._lock)
            if isinstance(exc, sqlite3.Error):
                raise ConfigError(f"state store {path!r}: {exc}") from exc
            raise

    # -- opening ------------------------------------------------------------------------
    def _recover(self) -> None:
        """Load the tables, replay what a dead owner journaled, write it, forget it."""
        book = self._book
        for counter, wid, used, reserved in self._db.execute(
                "SELECT counter, wid, used, reserved FROM state_cells"):
            book.load_cell(counter, wid, used, reserved)
        for rid, live, expires, lines in self._db.execute(
                "SELECT rid, live, expires, lines FROM state_holds WHERE state = 'held'"):
            book.load_row(rid, bool(live), expires, orjson.loads(lines))
        for counter, touched in self._db.execute(
                "SELECT counter, touched FROM state_runs ORDER BY touched"):
            book.load_run(counter, touched)
        left = self._journal.orphans()
        replayed = 0
        for segment in left:
            for line in Journal.read_lines(segment.path):
                replayed += self._replay(line)
        if left:
            dirty = book.take_dirty()
            self._write(dirty, self._now)
            self._forget(dirty)
            for segment in left:
                Journal.commit(segment)
            log.warning("state store %s: replayed %d operations from %d journal segment(s)",
                        self._path, replayed, len(left))

    def _replay(self, line: bytes) -> int:
        try:
            op = orjson.loads(line)
            if op[0] == "r":
                _, rid, lease, now, holds = op
                self._book.reserve(rid, [_hold(h) for h in holds], lease, now, ())
            elif op[0] == "f":
                _, rid, now, actual = op
                self._book.finish(rid, actual, now, ())
            elif op[0] == "e":
                _, rid, lease, now, grow = op
                self._book.extend(rid, grow, lease, now)
            else:
                _, now = op
                self._book.reclaim(now)
        except InvalidRequest:  # a reservation already finished in the snapshot
            return 0
        except (orjson.JSONDecodeError, ValueError, TypeError, IndexError) as exc:
            log.error("state journal: skipped an unreadable line (%s): %r", exc, line[:200])
            return 0
        self._now = max(self._now, now)
        return 1

    def _finished_state(self, rid: str) -> str | None:
        """The state of a reservation no longer in memory: only SQLite knows it."""
        if not self._seen.maybe(rid):  # exact "never finished here": no lookup
            return None
        row = self._reader.execute("SELECT state FROM state_holds WHERE rid = ?",
                                   (rid,)).fetchone()
        return None if row is None else row[0]

    # -- operations ---------------------------------------------------------------------
    async def reserve_and_read(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float,
        read: Sequence[Hold],
    ) -> tuple[Denial | None, list[LimitUsage]]:
        check_holds(request_id, holds, lease, now)
        self._usable()
        book = self._book
        reclaims = book.reclaims
        denial, usages, made = book.reserve(request_id, holds, lease, now, read)
        if made:
            if not self._append(orjson.dumps(["r", request_id, lease, now, [
                    [h.key, h.amount, h.limit, h.window, h.metric, h.rolling]  # enum values
                    for h in holds]], option=orjson.OPT_APPEND_NEWLINE), now):
                book.finish(request_id, None, now, ())  # not durable: never granted
                raise StoreUnavailable(self._broken or "state journal not writable")
        elif book.reclaims != reclaims:
            self._append_reclaim(now)
        return denial, usages

    async def extend(
        self, request_id: str, more: Mapping[str, int], *, lease: float, now: float
    ) -> Denial | NotHeld | None:
        grow = check_extend(request_id, more, lease, now)
        self._usable()
        book = self._book
        reclaims = book.reclaims
        result, changed = book.extend(request_id, grow, lease, now)
        if changed:
            self._append(orjson.dumps(["e", request_id, lease, now, grow],
                                      option=orjson.OPT_APPEND_NEWLINE), now)
        elif book.reclaims != reclaims:
            self._append_reclaim(now)
        return result

    async def finish_and_read(
        self, request_id: str, actual: Mapping[str, int] | None, *, now: float,
        read: Sequence[Hold],
    ) -> tuple[SettleResult, list[LimitUsage]]:
        actual = check_finish(request_id, actual, now)
        result, usages, changed = self._book.finish(request_id, actual, now, read)
        if changed:
            line = orjson.dumps(["f", request_id, now, actual],
                                option=orjson.OPT_APPEND_NEWLINE)
            # A finish only gives room back: applied even when the journal cannot take
            # it, and made durable by the next snapshot (the heal, or close()).
            self._append(line, now)
        return (SettleResult() if actual is None else result), usages

    async def usage(
        self, key: str, *, limit: int, window: Window, rolling: bool = False, now: float
    ) -> LimitUsage:
        check_usage_args(key, limit, window, now)
        book = self._book  # (readable while the journal is broken: nothing to journal)
        reclaims = book.reclaims
        found = book.usage(key, limit, window, rolling, now)
        if book.reclaims != reclaims:
            self._append_reclaim(now)
        return found

    def _usable(self) -> None:
        if self._broken is not None:
            self._heal_soon()
            raise StoreUnavailable(self._broken)

    def _heal_soon(self) -> None:
        """While the journal is broken, try (at most every HEAL_SECONDS) to make memory
        durable again: a snapshot of everything changed, then a test line in a fresh
        journal segment. Both written → the store answers again, no restart."""
        if self._healing is not None or self._closing:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._healed_at < HEAL_SECONDS:
            return
        self._healed_at = loop.time()
        self._healing = loop.create_task(self._heal())

    async def _heal(self) -> None:
        try:
            if self._flushing is not None:
                await self._flushing
            if not await self._snapshot():
                return
            try:
                self._journal.append(orjson.dumps(["x", self._now],
                                                  option=orjson.OPT_APPEND_NEWLINE))
            except OSError:
                return
            log.warning("SQLite state store %s: the journal is writable again; answering",
                        self._path)
            self._broken = None
        finally:
            self._healing = None

    def _append_reclaim(self, now: float) -> None:
        self._append(orjson.dumps(["x", now], option=orjson.OPT_APPEND_NEWLINE), now)

    def _append(self, line: bytes, now: float) -> bool:
        """Journal one operation; False when the journal cannot be written: the store
        then refuses reservations (fail closed) until `_heal` made memory durable."""
        self._now = max(self._now, now)
        if self._broken is not None:
            self._heal_soon()
            return False
        try:
            self._journal.append(line)
        except OSError as exc:
            self._broken = (f"SQLite state store {self._path!r}: the journal cannot be "
                            f"written ({exc}); refusing calls until it can")
            log.error("%s", self._broken)
            self._heal_soon()
            return False
        if self._flush_timer is None and self._flushing is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self._flush_seconds, self._start_flush)
        return True

    # -- snapshots ------------------------------------------------------------------------
    def _start_flush(self) -> None:
        self._flush_timer = None
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await self._snapshot()
        finally:
            self._flushing = None
            if self._book.has_changes and self._flush_timer is None and not self._closing:
                self._flush_timer = asyncio.get_running_loop().call_later(
                    self._flush_seconds, self._start_flush)

    async def _snapshot(self) -> bool:
        """Cut the journal, write the rows changed before the cut, then delete the
        segments they cover. On failure the rows stay dirty and the segments stay."""
        segment = self._journal.cut()
        if segment is not None:
            self._unwritten.append(segment)
        self._book.sweep(self._now)
        dirty = self._book.take_dirty()
        try:
            await asyncio.to_thread(self._write, dirty, self._now)
        except (sqlite3.Error, OSError) as exc:
            self._book.not_written(dirty)
            log.error("state store %s: snapshot failed (%s); the journal keeps "
                      "everything, retrying", self._path, exc)
            return False
        await self._forget_in_slices(dirty)
        for done in self._unwritten:
            Journal.commit(done)
        self._unwritten = []
        return True

    def _forget(self, dirty: Dirty) -> None:
        """`dirty` is in SQLite: its finished rows leave memory, their ids are seen."""
        for rid in self._book.written(dirty):
            self._seen.add(rid, self._now)
        self._seen.forget_before(self._now - self._retention)

    async def _forget_in_slices(self, dirty: Dirty) -> None:
        """`_forget` without holding the loop: a second's finished ids (thousands, a few
        µs each to hash into the filter) are added SEEN_SLICE at a time, before their
        rows leave memory — until then the rows answer for themselves, so an id is never
        both gone from memory and missing from the filter."""
        rows = self._book.rows
        done = [rid for rid in dirty.row_keys
                if (row := rows.get(rid)) is not None and row.state != HELD]
        seen, now = self._seen, self._now
        for at in range(0, len(done), SEEN_SLICE):
            if at:
                await asyncio.sleep(0)
            for rid in done[at:at + SEEN_SLICE]:
                seen.add(rid, now)
        self._book.written(dirty)
        seen.forget_before(now - self._retention)

    def _write(self, dirty: Dirty, now: float) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # (a gone cell written again since, by a late settle, is upserted after)
            db.executemany("DELETE FROM state_cells WHERE counter = ? AND wid = ?",
                           dirty.gone)
            # Multi-row statements (ledger/bulk.py): a few GIL hand-backs per snapshot,
            # not one per row, so a busy loop cannot starve this thread for seconds.
            insert_rows(db, _CELLS[0], 4, dirty.cells, _CELLS[1])
            insert_rows(db, _HOLDS[0], 5, [
                (rid, state, live, expires, orjson.dumps(lines).decode() if lines else "")
                for rid, state, live, expires, lines in dirty.holds], _HOLDS[1])
            db.executemany("DELETE FROM state_runs WHERE counter = ?",
                           [(c,) for c in dirty.runs_gone])
            insert_rows(db, _RUNS[0], 2, dirty.runs, _RUNS[1])
            db.execute("DELETE FROM state_holds WHERE live = 0 AND state != 'held' "
                       "AND expires < ?", (now - self._retention,))
            db.execute("COMMIT")
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # -- flags and claims (kept in SQLite) ------------------------------------------------
    async def get_flag(self, name: str) -> bool | None:
        return await self._flags.get_flag(name)

    async def set_flag(self, name: str, on: bool) -> None:
        await self._flags.set_flag(name, on)

    async def clear_flag(self, name: str) -> bool:
        return await self._flags.clear_flag(name)

    async def flags(self) -> dict[str, bool]:
        return await self._flags.flags()

    async def flags_version(self) -> int:
        return await self._flags.flags_version()

    async def claim(self, key: str, ttl: float, *, now: float) -> bool:
        return await self._flags.claim(key, ttl, now=now)

    async def close(self) -> None:
        """Write everything, delete the journal, let go of the file."""
        if self._lock is None:
            return
        self._closing = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._flushing is not None:
            await self._flushing
        if self._healing is not None:
            await self._healing
        await self._snapshot()  # (with a broken journal too: memory holds the newest)
        for segment in self._unwritten:  # not written: kept for the next start's replay
            os.close(segment.fd)
        self._unwritten = []
        self._journal.close()
        self._seen.close()
        await self._flags.close()
        self._reader.close()
        self._db.close()
        release(self._lock)
        self._lock = None


    async def written(self) -> None:
        """Wait until the background snapshots have written every change to SQLite."""
        while self._book.has_changes or self._flushing is not None:
            if self._flushing is None:  # one snapshot at a time: the same connection
                if self._flush_timer is not None:
                    self._flush_timer.cancel()
                    self._flush_timer = None
                self._start_flush()
            flushing = self._flushing
            assert flushing is not None
            await asyncio.shield(flushing)
            if self._book.has_changes and self._unwritten:
                return  # the snapshot failed: the journal keeps everything

    @property
    def in_memory(self) -> tuple[list[str], list[str]]:
        """(reservation ids, counters) the owner keeps in memory: what snapshots and the
        sweep have not let go of yet."""
        return list(self._book.rows), list(self._book.cells)

    async def abandon(self) -> None:
        """Stop as a killed process would: the journal and the last snapshot stay, nothing
        is written since, the lock goes. For crash tests (a snapshot already running in
        its thread is let finish: a thread cannot be killed)."""
        if self._lock is None:
            return
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._flushing is not None:
            await self._flushing
        self._closing = True
        for segment in self._unwritten:
            os.close(segment.fd)
        self._unwritten = []
        self._journal.drop()
        self._seen.close()
        await self._flags.close()
        self._reader.close()
        self._db.close()
        release(self._lock)
        self._lock = None


def _hold(line: list[Any]) -> Hold:
    key, amount, limit, window, metric, rolling = line
    return Hold(key, amount, limit, Window(window), Metric(metric), rolling)
