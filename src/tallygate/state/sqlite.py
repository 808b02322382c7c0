"""SQLite state store: the embedded default. Survives restarts; safe across several
processes on one machine.

WAL journal; operations run in `BEGIN IMMEDIATE` transactions (the write lock is
taken up front, so two processes can never both read "room left" and both reserve
it), grouped by state/sqlite_batch.py so concurrent operations share one commit. All
sqlite3 calls run in one dedicated worker thread per store, so the event loop never
blocks. Tables are prefixed `state_` so the ledger may share the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tallygate.core.windows import counter_name, live_range, room_returns_at
from tallygate.errors import InvalidRequest, StoreUnavailable
from tallygate.state import (
    check_actual,
    check_holds,
    check_request,
    check_time,
    check_usage_args,
)
from tallygate.state.sqlite_batch import BatchWorker
from tallygate.types import Denial, Hold, LimitUsage, SettleResult, Window

T = TypeVar("T")
RETENTION = 86_400.0  # seconds a finished reservation is remembered (idempotent settle)
SWEEP_EVERY = 4096  # reservations between sweeps of forgotten ones (per process)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state_cells (
  counter TEXT NOT NULL, wid INTEGER NOT NULL,
  used INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (counter, wid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_reservations (
  rid TEXT PRIMARY KEY, state TEXT NOT NULL, touched REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_lines (
  rid TEXT NOT NULL, idx INTEGER NOT NULL, key TEXT NOT NULL, counter TEXT NOT NULL,
  wid INTEGER NOT NULL, amount INTEGER NOT NULL, metric TEXT NOT NULL,
  expires REAL NOT NULL, live INTEGER NOT NULL,
  PRIMARY KEY (rid, idx)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS state_lines_lease ON state_lines (counter, expires) WHERE live = 1;
CREATE TABLE IF NOT EXISTS state_flags (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state_claims (key TEXT PRIMARY KEY, until REAL NOT NULL);
"""


class SqliteStore:
    """StateStore on one SQLite file (or `:memory:` for a single store object)."""

    def __init__(self, path: str, *, busy_timeout: float = 10.0,
                 retention: float = RETENTION) -> None:
        self._path = path
        self._busy_ms = int(busy_timeout * 1000)
        self._retention = retention
        # `:memory:` is private to one connection: only the worker's may be used.
        inline = None if path == ":memory:" else self._connect_inline
        self._worker = BatchWorker(self._connect, "tg-sqlite-state", inline=inline)
        self._ops = 0

    # -- plumbing -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)  # idempotent; concurrent creators wait on busy_timeout
        return db

    def _connect_inline(self) -> sqlite3.Connection:
        """The event loop's connection: never waits on a lock (the worker's did the
        schema set-up already, or this attempt fails fast and the worker is used)."""
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 0")
        db.execute("PRAGMA synchronous = NORMAL")
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.close()
            raise sqlite3.OperationalError("database not yet in WAL mode")
        db.execute("SELECT 1 FROM state_meta LIMIT 1")  # schema exists, or fail fast
        return db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._worker.run(work)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite state store {self._path!r} unavailable: {exc}"
                                   ) from exc

    # -- reservations -------------------------------------------------------------
    async def reserve(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float
    ) -> Denial | None:
        check_holds(request_id, holds, lease, now)
        holds = list(holds)
        self._ops += 1
        sweep = self._ops % SWEEP_EVERY == 0
        return await self._run(lambda db: self._reserve(db, request_id, holds, lease, now,
                                                        sweep))

    def _reserve(self, db: sqlite3.Connection, rid: str, holds: list[Hold], lease: float,
                 now: float, sweep: bool) -> Denial | None:
        row = db.execute("SELECT state FROM state_reservations WHERE rid = ?", (rid,)
                         ).fetchone()
        if row is not None:
            if row[0] == "held":
                return None
            raise InvalidRequest(f"request_id {rid!r} was already {row[0]}; "
                                 "use a new id for a new reservation")
        plan = []
        for hold in holds:
            counter = counter_name(hold.key, hold.window, hold.rolling)
            _reclaim(db, counter, now)
            oldest, current = live_range(hold.window, now, hold.rolling)
            used, reserved, first = _totals(db, counter, oldest, current)
            if hold.amount > 0 and used + reserved + hold.amount > hold.limit:
                return Denial(
                    key=hold.key, limit=hold.limit, used=used + reserved,
                    requested=hold.amount,
                    reset_at=room_returns_at(hold.window, now, hold.rolling, first),
                    window=hold.window, metric=hold.metric)
            plan.append((hold, counter, current))
        expires = now + lease
        db.execute("INSERT INTO state_reservations VALUES (?, 'held', ?)", (rid, expires))
        for idx, (hold, counter, wid) in enumerate(plan):
            db.execute(
                "INSERT INTO state_cells (counter, wid, reserved) VALUES (?, ?, ?) "
                "ON CONFLICT (counter, wid) DO UPDATE SET reserved = reserved + excluded.reserved",
                (counter, wid, hold.amount))
            db.execute("INSERT INTO state_lines VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                       (rid, idx, hold.key, counter, wid, hold.amount, hold.metric.value,
                        expires))
        if sweep:
            self._sweep(db, now)
        return None

    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        """Forget reservations finished (or expired and reclaimed) long ago."""
        cutoff = now - self._retention
        db.execute(
            "DELETE FROM state_lines WHERE rid IN (SELECT rid FROM state_reservations r "
            "WHERE touched < ? AND NOT EXISTS (SELECT 1 FROM state_lines l "
            "WHERE l.rid = r.rid AND l.live = 1))", (cutoff,))
        db.execute("DELETE FROM state_reservations WHERE touched < ? AND NOT EXISTS "
                   "(SELECT 1 FROM state_lines l WHERE l.rid = state_reservations.rid)",
                   (cutoff,))

    async def settle(
        self, request_id: str, actual: Mapping[str, int], *, now: float
    ) -> SettleResult:
        check_actual(request_id, actual, now)
        spent = dict(actual)
        return await self._run(lambda db: _finish(db, request_id, spent, now))

    async def release(self, request_id: str, *, now: float) -> None:
        check_request(request_id, now)
        await self._run(lambda db: _finish(db, request_id, None, now))

    async def usage(
        self, key: str, *, limit: int, window: Window, rolling: bool = False, now: float
    ) -> LimitUsage:
        check_usage_args(key, limit, window, now)
        counter = counter_name(key, window, rolling)
        oldest, current = live_range(window, now, rolling)

        def work(db: sqlite3.Connection) -> tuple[int, int, int | None]:
            _reclaim(db, counter, now)
            return _totals(db, counter, oldest, current)

        used, reserved, first = await self._run(work)
        return LimitUsage(key=key, limit=limit, used=used, reserved=reserved,
                          reset_at=room_returns_at(window, now, rolling, first))

    # -- flags and claims -----------------------------------------------------------
    async def get_flag(self, name: str) -> bool | None:
        row = await self._run(lambda db: db.execute(
            "SELECT value FROM state_flags WHERE name = ?", (name,)).fetchone())
        return None if row is None else bool(row[0])

    async def set_flag(self, name: str, on: bool) -> None:
        if not isinstance(name, str) or not name or not isinstance(on, bool):
            raise InvalidRequest(f"set_flag needs a name and a bool, got {name!r}, {on!r}")

        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO state_flags VALUES (?, ?) ON CONFLICT (name) "
                       "DO UPDATE SET value = excluded.value", (name, int(on)))
            db.execute("INSERT INTO state_meta VALUES ('flags_version', 1) ON CONFLICT "
                       "(name) DO UPDATE SET value = value + 1")

        await self._run(work)

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


def _reclaim(db: sqlite3.Connection, counter: str, now: float) -> None:
    """Return the amounts of expired leases on this counter."""
    rows = db.execute("SELECT wid, amount FROM state_lines WHERE counter = ? AND live = 1 "
                      "AND expires <= ?", (counter, now)).fetchall()
    if not rows:
        return
    for wid, amount in rows:
        db.execute("UPDATE state_cells SET reserved = reserved - ? WHERE counter = ? "
                   "AND wid = ?", (amount, counter, wid))
    db.execute("UPDATE state_lines SET live = 0 WHERE counter = ? AND live = 1 "
               "AND expires <= ?", (counter, now))


def _totals(db: sqlite3.Connection, counter: str, oldest: int, current: int
            ) -> tuple[int, int, int | None]:
    """used, reserved and the oldest non-empty window id in [oldest, current]."""
    db.execute("DELETE FROM state_cells WHERE counter = ? AND wid < ?", (counter, oldest))
    used = reserved = 0
    first: int | None = None
    for wid, u, r in db.execute(
            "SELECT wid, used, reserved FROM state_cells WHERE counter = ? AND wid <= ? "
            "ORDER BY wid", (counter, current)):
        used += u
        reserved += r
        if first is None and (u or r):
            first = wid
    return used, reserved, first


def _finish(db: sqlite3.Connection, rid: str, actual: dict[str, int] | None,
            now: float) -> SettleResult:
    """Settle (actual given) or release (None). An expired reservation is still charged
    its actual usage (the call happened); its hold is removed exactly once."""
    row = db.execute("SELECT state FROM state_reservations WHERE rid = ?", (rid,)).fetchone()
    if row is None or row[0] != "held":
        return SettleResult(already_settled=True)
    charged: dict[str, int] = {}
    overrun: dict[str, int] = {}
    lines: list[Any] = db.execute(
        "SELECT key, counter, wid, amount, metric, live FROM state_lines WHERE rid = ?",
        (rid,)).fetchall()
    for key, counter, wid, amount, metric, live in lines:
        spent = 0 if actual is None else actual.get(metric, 0)
        db.execute(
            "INSERT INTO state_cells (counter, wid, used, reserved) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (counter, wid) DO UPDATE SET used = used + excluded.used, "
            "reserved = reserved + excluded.reserved",
            (counter, wid, spent, -amount if live else 0))
        if actual is not None:
            charged[key] = spent
            if spent > amount:
                overrun[key] = spent - amount
    db.execute("UPDATE state_lines SET live = 0 WHERE rid = ?", (rid,))
    state = "released" if actual is None else "settled"
    db.execute("UPDATE state_reservations SET state = ?, touched = ? WHERE rid = ?",
               (state, now, rid))
    return SettleResult(charged=charged, overrun=overrun)
