"""Alerts that fired, kept beside the ledger (table `tg_alerts`) so the dashboard of any
replica, or `tallygate dashboard` after the gateway stopped, shows them with their payload.

The alert engine appends each payload after it won the firing claim (one row per firing
across replicas). Rows older than `KEEP_SECONDS` are dropped as new ones arrive.
`open_alert_log(url)` takes the ledger's URL: `memory://`, `sqlite:///PATH` or
`postgresql://…`, like the key store.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from tallygate.errors import ConfigError, StoreUnavailable
from tallygate.pg_link import PgLink
from tallygate.sqlite_thread import SqliteThread

KEEP_SECONDS = 30 * 86400
MAX_READ = 500

_SCHEMA = ("CREATE TABLE IF NOT EXISTS tg_alerts (id TEXT PRIMARY KEY, fired_at {real} NOT NULL,"
           " rule_id TEXT NOT NULL, metric TEXT NOT NULL, payload TEXT NOT NULL)")
_INDEX = "CREATE INDEX IF NOT EXISTS tg_alerts_fired ON tg_alerts (fired_at)"
_INSERT = ("INSERT INTO tg_alerts (id, fired_at, rule_id, metric, payload) VALUES (?, ?, ?, ?, ?)"
           " ON CONFLICT (id) DO NOTHING")  # an append sent twice keeps one of each
_PRUNE = "DELETE FROM tg_alerts WHERE fired_at < ?"
_RECENT = "SELECT payload FROM tg_alerts ORDER BY fired_at DESC, id LIMIT ?"


class AlertLog(Protocol):
    async def append(self, payloads: Sequence[dict[str, Any]], *, now: float) -> None: ...

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest payloads first."""
        ...

    async def close(self) -> None: ...


def _rows(payloads: Sequence[dict[str, Any]], now: float) -> list[tuple[Any, ...]]:
    return [("al_" + secrets.token_hex(8), now, str(p["rule"]["id"]), str(p["rule"]["metric"]),
             orjson.dumps(p, default=str).decode()) for p in payloads]


class MemoryAlertLog:
    def __init__(self) -> None:
        self._rows: list[tuple[Any, ...]] = []

    async def append(self, payloads: Sequence[dict[str, Any]], *, now: float) -> None:
        self._rows = [r for r in self._rows if r[1] >= now - KEEP_SECONDS] + _rows(payloads, now)

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = sorted(self._rows, key=lambda r: (-r[1], r[0]))[:min(limit, MAX_READ)]
        return [orjson.loads(r[4]) for r in rows]

    async def close(self) -> None:
        return None


class SqliteAlertLog:
    """One connection on one worker thread, WAL (shared with the ledger's file)."""

    def __init__(self, path: str) -> None:
        self._sqlite = SqliteThread(path, "tg-alert-log", unavailable="alert log unavailable",
                                    closed=lambda: StoreUnavailable("the alert log is closed"))

    async def open(self) -> SqliteAlertLog:
        try:
            await self._sqlite.connect(_prepare)
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot open the alert log in {self._sqlite.path!r}: {exc}") from None
        return self

    def _append_sync(self, rows: list[tuple[Any, ...]], now: float) -> None:
        db = self._sqlite.db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_INSERT, rows)
            db.execute(_PRUNE, (now - KEEP_SECONDS,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def append(self, payloads: Sequence[dict[str, Any]], *, now: float) -> None:
        if payloads:
            await self._sqlite.run(self._append_sync, _rows(payloads, now), now)

    def _recent_sync(self, limit: int) -> list[dict[str, Any]]:
        rows = self._sqlite.db().execute(_RECENT, (min(limit, MAX_READ),)).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._sqlite.run(self._recent_sync, limit)
        return result

    async def close(self) -> None:
        await self._sqlite.close()


def _prepare(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA.format(real="REAL"))
    conn.execute(_INDEX)


class PostgresAlertLog:
    """One psycopg 3 async connection (a PgLink: made again after a server restart),
    serialised by the link (a few rows an hour)."""

    def __init__(self, url: str) -> None:
        self._link = PgLink(url, "alert log")

    async def open(self) -> PostgresAlertLog:
        import psycopg

        try:
            conn = await self._link.connect()
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tg_alerts'))")
                await conn.execute(_SCHEMA.format(real="DOUBLE PRECISION"))
                await conn.execute(_INDEX)
        except psycopg.Error as exc:
            raise ConfigError(f"cannot open the alert log: {exc}".strip()) from None
        return self

    async def append(self, payloads: Sequence[dict[str, Any]], *, now: float) -> None:
        if not payloads:
            return
        rows = _rows(payloads, now)  # their ids drawn once: sent again, nothing doubles

        async def write(conn: Any) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(_INSERT.replace("?", "%s"), rows)
                await cur.execute(_PRUNE.replace("?", "%s"), (now - KEEP_SECONDS,))

        await self._link.idempotent(write)

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        async def fetch(conn: Any) -> list[Any]:
            cur = await conn.execute(_RECENT.replace("?", "%s"), (min(limit, MAX_READ),))
            return list(await cur.fetchall())

        return [orjson.loads(r[0]) for r in await self._link.idempotent(fetch)]

    async def close(self) -> None:
        await self._link.close()


async def open_alert_log(url: str) -> AlertLog:
    """The alert log beside the ledger at `url`."""
    if url.startswith("memory://"):
        return MemoryAlertLog()
    if url.startswith("sqlite:///"):
        return await SqliteAlertLog(url.removeprefix("sqlite:///")).open()
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresAlertLog(url).open()
    raise ConfigError(f"no alert log for {url.split('://', 1)[0]!r} ledgers")
