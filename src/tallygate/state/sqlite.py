"""SQLite state store: the embedded default. Survives restarts; safe across several
processes on one machine.

WAL journal; operations run in `BEGIN IMMEDIATE` transactions (the write lock is
taken up front, so two processes can never both read "room left" and both reserve
it), grouped by state/sqlite_batch.py so concurrent operations share one commit.
Tables are prefixed `state_` so the ledger may share the file.

Kept lean on purpose (a reserve + settle pair is two short transactions): one row per
reservation holding its lines as JSON, window cells updated in place, expired leases
found through a partial index, and the usage a caller wants to show read in the same
transaction as the operation. extend() is one more such transaction.

Lifetime counters (`Window.RUN`) have their last write in `state_runs`: one older than
`run_ttl` that holds nothing reads as empty, is cleared before it is written again, and
is deleted by a sweep at most every RUN_SWEEP_EVERY seconds (of the callers' clock).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import orjson

from tallygate.core.windows import counter_name, live_range, room_returns_at
from tallygate.errors import InvalidRequest, StoreUnavailable
from tallygate.sqlite_wal import use_wal
from tallygate.state.base import RUN_TTL
from tallygate.state.checks import (
    check_extend,
    check_finish,
    check_flag,
    check_flag_name,
    check_holds,
    check_time,
    check_usage_args,
)
from tallygate.state.file_lock import release, take_sharer
from tallygate.state.read_along import PlainFromRead
from tallygate.state.sqlite_batch import BatchWorker
from tallygate.types import Denial, Hold, LimitUsage, Metric, NotHeld, SettleResult, Window

T = TypeVar("T")
RETENTION = 86_400.0  # seconds a finished reservation is remembered (idempotent settle)
SWEEP_EVERY = 4096  # reservations between sweeps of forgotten ones (per process)
RUN_SWEEP_EVERY = 3600.0  # seconds between sweeps of expired lifetime counters (at most)
RUN_PREFIX = counter_name("", Window.RUN, False)  # "c:run:": names of lifetime counters

# state_holds.lines: [[counter, window id, amount, metric, key, limit], ...]; emptied
# once finished (only the state is needed then); rows written before extend() existed
# have no limit (and cannot be extended). `live` = its amounts still count as
# reserved; `expires` = lease end. The (live, expires) index serves both the
# reclaim of expired leases (live = 1) and the sweep of forgotten ones (live = 0).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS state_cells (
  counter TEXT NOT NULL, wid INTEGER NOT NULL,
  used INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (counter, wid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_holds (
  rid TEXT PRIMARY KEY, state TEXT NOT NULL, live INTEGER NOT NULL,
  expires REAL NOT NULL, lines TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS state_holds_lease ON state_holds (live, expires);
CREATE TABLE IF NOT EXISTS state_flags (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state_claims (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS state_runs (counter TEXT PRIMARY KEY, touched REAL NOT NULL)
  WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS state_runs_touched ON state_runs (touched);
"""
# In 0.1 a reservation was a state_reservations row plus one state_lines row per
# hold. Holds still live in that layout are given back once, then the tables dropped.
_OLD_LAYOUT = """
UPDATE state_cells SET reserved = reserved - coalesce((
  SELECT sum(amount) FROM state_lines l WHERE l.live = 1
  AND l.counter = state_cells.counter AND l.wid = state_cells.wid), 0);
DROP TABLE state_lines;
DROP TABLE IF EXISTS state_reservations;
"""
_UPSERT = ("INSERT INTO state_cells (counter, wid, used, reserved) VALUES (?, ?, ?, ?) "
           "ON CONFLICT (counter, wid) DO UPDATE SET used = used + excluded.used, "
           "reserved = reserved + excluded.reserved")
_TOUCH = ("INSERT INTO state_runs VALUES (?, ?) ON CONFLICT (counter) "
          "DO UPDATE SET touched = max(touched, excluded.touched)")


class SqliteStore(PlainFromRead):
    """StateStore on one SQLite file (or `:memory:` for a single store object)."""

    def __init__(self, path: str, *, busy_timeout: float = 10.0,
                 retention: float = RETENTION, run_ttl: float = RUN_TTL) -> None:
        check_time("run_ttl", run_ttl)
        self._path = path
        self._busy_ms = int(busy_timeout * 1000)
        self._retention = retention
        self._run_ttl = run_ttl
        self._next_run_sweep = -float("inf")
        # `:memory:` is private to one connection: only the worker's may be used.
        inline = None if path == ":memory:" else self._connect_inline
        self._worker = BatchWorker(self._connect, "tg-sqlite-state", inline=inline)
        self._ops = 0
        # The limit tables are shared with other processes only while no owner
        # (state/sqlite_owner.py) keeps them in its memory: taken at the first limit
        # operation, so flag and claim users (the CLI) never need it.
        self._sharing = path == ":memory:"
        self._share_fd: int | None = None

    def _share(self) -> None:
        self._share_fd = take_sharer(self._path)
        self._sharing = True

    # -- plumbing -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        return connect_state(self._path, self._busy_ms)

    def _connect_inline(self) -> sqlite3.Connection:
        """The event loop's connection: never waits on a lock (the worker's did the
        schema set-up already, or this attempt fails fast and the worker is used)."""
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 0")
        db.execute("PRAGMA synchronous = NORMAL")
        # Checkpoints copy the WAL back into the file (and sync): the worker thread
        # runs them (BatchWorker.checkpoint), never the event loop.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.close()
            raise sqlite3.OperationalError("database not yet in WAL mode")
        db.execute("SELECT 1 FROM state_holds LIMIT 1")  # schema exists, or fail fast
        return db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._worker.run(work)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite state store {self._path!r} unavailable: {exc}"
                                   ) from exc

    # -- reservations (reserve / settle / release: PlainFromRead) ---------------------
    async def reserve_and_read(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float,
        read: Sequence[Hold],
    ) -> tuple[Denial | None, list[LimitUsage]]:
        check_holds(request_id, holds, lease, now)
        if not self._sharing:
            self._share()
        holds = list(holds)
        read = list(read)
        self._ops += 1
        sweep = self._ops % SWEEP_EVERY == 0
        sweep_runs = now >= self._next_run_sweep
        if sweep_runs:
            self._next_run_sweep = now + min(RUN_SWEEP_EVERY, self._run_ttl / 8)
        return await self._run(lambda db: self._reserve(db, request_id, holds, lease, now,
                                                        sweep, sweep_runs, read))

    def _reserve(self, db: sqlite3.Connection, rid: str, holds: list[Hold], lease: float,
                 now: float, sweep: bool, sweep_runs: bool, read: list[Hold]
                 ) -> tuple[Denial | None, list[LimitUsage]]:
        row = db.execute("SELECT state FROM state_holds WHERE rid = ?", (rid,)).fetchone()
        if row is not None:
            if row[0] == "held":
                return None, _read(db, read, now, ttl=self._run_ttl)
            raise InvalidRequest(f"request_id {rid!r} was already {row[0]}; "
                                 "use a new id for a new reservation")
        _reclaim(db, now)
        if sweep_runs:
            _sweep_runs(db, now - self._run_ttl)
        lines = []
        after: dict[str, tuple[int, int, int | None]] = {}
        for hold in holds:
            counter = counter_name(hold.key, hold.window, hold.rolling)
            oldest, current = live_range(hold.window, now, hold.rolling)
            if hold.window is Window.RUN:
                _renew_run(db, counter, now, self._run_ttl)
            used, reserved, first = _totals(db, counter, oldest, current)
            if hold.amount > 0 and used + reserved + hold.amount > hold.limit:
                return Denial(
                    key=hold.key, limit=hold.limit, used=used + reserved,
                    requested=hold.amount,
                    reset_at=room_returns_at(hold.window, now, hold.rolling, first),
                    window=hold.window, metric=hold.metric), []
            lines.append((counter, current, hold.amount, hold.metric.value, hold.key,
                          hold.limit))
            after[counter] = (used, reserved + hold.amount,
                              current if first is None and hold.amount else first)
        db.execute("INSERT INTO state_holds VALUES (?, 'held', 1, ?, ?)",
                   (rid, now + lease, orjson.dumps(lines).decode()))
        db.executemany(_UPSERT, [(line[0], line[1], 0, line[2]) for line in lines
                                 if line[2]])
        _touch_runs(db, [line[0] for line in lines], now)
        if sweep:
            db.execute("DELETE FROM state_holds WHERE live = 0 AND expires < ?",
                       (now - self._retention,))
        return None, _read(db, read, now, after)

    async def extend(
        self, request_id: str, more: Mapping[str, int], *, lease: float, now: float
    ) -> Denial | NotHeld | None:
        grow = check_extend(request_id, more, lease, now)
        if not self._sharing:
            self._share()
        return await self._run(lambda db: _extend(db, request_id, grow, lease, now))

    async def finish_and_read(
        self, request_id: str, actual: Mapping[str, int] | None, *, now: float,
        read: Sequence[Hold],
    ) -> tuple[SettleResult, list[LimitUsage]]:
        spent = check_finish(request_id, actual, now)
        if not self._sharing:
            self._share()
        read = list(read)
        return await self._run(lambda db: _finish(db, request_id, spent, now, read,
                                                  self._run_ttl))

    async def usage(
        self, key: str, *, limit: int, window: Window, rolling: bool = False, now: float
    ) -> LimitUsage:
        check_usage_args(key, limit, window, now)
        if not self._sharing:
            self._share()
        hold = Hold(key, 0, limit, window, rolling=rolling)

        def work(db: sqlite3.Connection) -> LimitUsage:
            _reclaim(db, now)
            return _read(db, [hold], now, ttl=self._run_ttl)[0]

        return await self._run(work)

    # -- flags and claims -----------------------------------------------------------
    async def get_flag(self, name: str) -> bool | None:
        row = await self._run(lambda db: db.execute(
            "SELECT value FROM state_flags WHERE name = ?", (name,)).fetchone())
        return None if row is None else bool(row[0])

    async def set_flag(self, name: str, on: bool) -> None:
        check_flag(name, on)

        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO state_flags VALUES (?, ?) ON CONFLICT (name) "
                       "DO UPDATE SET value = excluded.value", (name, int(on)))
            db.execute("INSERT INTO state_meta VALUES ('flags_version', 1) ON CONFLICT "
                       "(name) DO UPDATE SET value = value + 1")

        await self._run(work)

    async def clear_flag(self, name: str) -> bool:
        check_flag_name(name)

        def work(db: sqlite3.Connection) -> bool:
            found = db.execute("DELETE FROM state_flags WHERE name = ?", (name,)).rowcount
            db.execute("INSERT INTO state_meta VALUES ('flags_version', 1) ON CONFLICT "
                       "(name) DO UPDATE SET value = value + 1")
            return bool(found)

        return bool(await self._run(work))

    async def flags(self) -> dict[str, bool]:
        rows = await self._run(lambda db: db.execute(
            "SELECT name, value FROM state_flags").fetchall())
        return {name: bool(value) for name, value in rows}

    async def flags_version(self) -> int:
        row = await self._run(lambda db: db.execute(
            "SELECT value FROM state_meta WHERE name = 'flags_version'").fetchone())
        return 0 if row is None else int(row[0])

    async def claim(self, key: str, ttl: float, *, now: float) -> bool:
        check_time("ttl", ttl)
        check_time("now", now)

        def work(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT until FROM state_claims WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] > now:
                return False
            db.execute("INSERT INTO state_claims VALUES (?, ?) ON CONFLICT (key) "
                       "DO UPDATE SET until = excluded.until", (key, now + ttl))
            return True

        return await self._run(work)

    async def close(self) -> None:
        await asyncio.to_thread(self._worker.close)
        release(self._share_fd)
        self._share_fd = None
        self._sharing = self._path == ":memory:"


def connect_state(path: str, busy_ms: int) -> sqlite3.Connection:
    """A connection in WAL mode with the state tables created (or converted from 0.1)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {busy_ms}")
    use_wal(db, busy_ms)
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("BEGIN IMMEDIATE")  # concurrent creators wait on busy_timeout
    try:
        statements = _SCHEMA.split(";")
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'state_lines'").fetchone():
            statements += _OLD_LAYOUT.split(";")
        for statement in statements:
            if statement.strip():
                db.execute(statement)
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
    return db


def _reclaim(db: sqlite3.Connection, now: float) -> None:
    """Give back the amounts of every lease that has expired (any limit)."""
    rows = db.execute("SELECT rid, lines FROM state_holds WHERE live = 1 AND expires <= ?",
                      (now,)).fetchall()
    for rid, lines in rows:
        db.executemany("UPDATE state_cells SET reserved = reserved - ? WHERE counter = ? "
                       "AND wid = ?", [(line[2], line[0], line[1])
                                       for line in orjson.loads(lines)])
        db.execute("UPDATE state_holds SET live = 0 WHERE rid = ?", (rid,))


def _touch_runs(db: sqlite3.Connection, counters: Sequence[str], now: float) -> None:
    """Note a write at `now` on the lifetime counters among `counters`."""
    runs = [(c, now) for c in counters if c.startswith(RUN_PREFIX)]
    if runs:
        db.executemany(_TOUCH, runs)


def _is_stale_run(db: sqlite3.Connection, counter: str, now: float, ttl: float) -> bool:
    row = db.execute("SELECT touched FROM state_runs WHERE counter = ?", (counter,)
                     ).fetchone()
    return row is not None and row[0] + ttl < now


def _renew_run(db: sqlite3.Connection, counter: str, now: float, ttl: float) -> None:
    """Before writing a lifetime counter: empty it if nobody wrote to it for `ttl` and
    it holds nothing (it counts as empty already; the write must not revive it)."""
    if _is_stale_run(db, counter, now, ttl):
        db.execute("DELETE FROM state_cells WHERE counter = ? AND reserved = 0", (counter,))


def _sweep_runs(db: sqlite3.Connection, cutoff: float) -> None:
    """Delete the lifetime counters last written before `cutoff` that hold nothing."""
    db.execute("DELETE FROM state_cells WHERE reserved = 0 AND counter IN "
               "(SELECT counter FROM state_runs WHERE touched < ?)", (cutoff,))
    db.execute("DELETE FROM state_runs WHERE touched < ? AND counter NOT IN "
               "(SELECT counter FROM state_cells)", (cutoff,))

def _totals(db: sqlite3.Connection, counter: str, oldest: int, current: int
            ) -> tuple[int, int, int | None]:
    """used, reserved and the oldest non-empty window id in [oldest, current]; cells
    that left the window are deleted when met."""
    used = reserved = 0
    first: int | None = None
    stale = False
    for wid, u, r in db.execute(
            "SELECT wid, used, reserved FROM state_cells WHERE counter = ? AND wid <= ? "
            "ORDER BY wid", (counter, current)):
        if wid < oldest:
            stale = True
            continue
        used += u
        reserved += r
        if first is None and (u or r):
            first = wid
    if stale:
        db.execute("DELETE FROM state_cells WHERE counter = ? AND wid < ?", (counter, oldest))
    return used, reserved, first


def _read(db: sqlite3.Connection, holds: list[Hold], now: float,
          known: Mapping[str, tuple[int, int, int | None]] | None = None,
          ttl: float = RUN_TTL) -> list[LimitUsage]:
    """Usage of each hold's limit at `now` (`known`: totals already read, by counter)."""
    out = []
    for hold in holds:
        counter = counter_name(hold.key, hold.window, hold.rolling)
        totals = known.get(counter) if known else None
        if totals is None:
            totals = _totals(db, counter, *live_range(hold.window, now, hold.rolling))
            if (hold.window is Window.RUN and totals[0] and not totals[1]
                    and _is_stale_run(db, counter, now, ttl)):
                totals = (0, 0, None)
        used, reserved, first = totals
        out.append(LimitUsage(key=hold.key, limit=hold.limit, used=used, reserved=reserved,
                              reset_at=room_returns_at(hold.window, now, hold.rolling,
                                                       first)))
    return out


def _extend(db: sqlite3.Connection, rid: str, grow: Mapping[str, int], lease: float,
            now: float) -> Denial | NotHeld | None:
    """Grow a held reservation's lines of the metrics in `grow`, all or none, and renew
    its lease (StateStore.extend)."""
    row = db.execute("SELECT state, live, expires, lines FROM state_holds WHERE rid = ?",
                     (rid,)).fetchone()
    if row is None:
        return NotHeld(rid, "unknown")
    state, live, expires, text = row
    if state != "held":
        return NotHeld(rid, state)
    if not live or expires <= now:
        return NotHeld(rid, "expired")
    _reclaim(db, now)  # other expired leases give their room back first
    lines = orjson.loads(text)
    changes = []
    for line in lines:
        more = grow.get(line[3])
        if not more:
            continue
        if len(line) < 6:  # reserved before extend() existed: its limit is unknown
            return NotHeld(rid, "unknown")
        counter, wid, amount, metric, key, limit = line
        kind, window_name, _ = counter.split(":", 2)
        window = Window(window_name)
        oldest, current = live_range(window, now, kind == "r")
        if kind == "c" and wid != current:
            continue  # its window ended: that bucket is closed and limits no more
        used, reserved, first = _totals(db, counter, oldest, current)
        if used + reserved + more > limit:
            return Denial(key=key, limit=limit, used=used + reserved, requested=more,
                          reset_at=room_returns_at(window, now, kind == "r", first),
                          window=window, metric=Metric(metric))
        line[2] = amount + more
        changes.append((counter, wid, 0, more))
    db.executemany(_UPSERT, changes)
    db.execute("UPDATE state_holds SET expires = ?, lines = ? WHERE rid = ?",
               (now + lease, orjson.dumps(lines).decode(), rid))
    _touch_runs(db, [line[0] for line in lines], now)
    return None


def _finish(db: sqlite3.Connection, rid: str, actual: dict[str, int] | None,
            now: float, read: list[Hold], ttl: float
            ) -> tuple[SettleResult, list[LimitUsage]]:
    """Settle (actual given) or release (None). An expired reservation is still charged
    its actual usage (the call happened); its hold is removed exactly once."""
    row = db.execute("SELECT state, live, lines FROM state_holds WHERE rid = ?", (rid,)
                     ).fetchone()
    if row is None or row[0] != "held":  # (a release always answers an empty result)
        return (SettleResult(already_settled=actual is not None),
                _read(db, read, now, ttl=ttl))
    _, live, lines = row
    charged: dict[str, int] = {}
    overrun: dict[str, int] = {}
    changes = []
    written = []
    for counter, wid, amount, metric, key, *_ in orjson.loads(lines):
        spent = 0 if actual is None else actual.get(metric, 0)
        held = amount if live else 0
        if spent and counter.startswith(RUN_PREFIX):
            if not live:  # (a live hold keeps its counter fresh)
                _renew_run(db, counter, now, ttl)
            written.append(counter)
        if spent or held:
            changes.append((counter, wid, spent, -held))
        if actual is not None:
            charged[key] = spent
            if spent > amount:
                overrun[key] = spent - amount
    db.executemany(_UPSERT, changes)
    _touch_runs(db, written, now)
    db.execute("UPDATE state_holds SET state = ?, live = 0, expires = ?, lines = '' "
               "WHERE rid = ?", ("released" if actual is None else "settled", now, rid))
    return SettleResult(charged=charged, overrun=overrun), _read(db, read, now, ttl=ttl)
