"""SQLite ledger: WAL mode, one connection owned by one worker thread (the event loop never
waits on the disk), each batch inserted in one transaction with INSERT OR IGNORE, 64
rows a statement (ledger/bulk.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tallygate.errors import ConfigError, StoreUnavailable
from tallygate.ledger.bulk import insert_rows
from tallygate.ledger.migrations import COLUMN_NAMES, Dialect, migrate_sqlite, quote
from tallygate.ledger.rows import SqlReads, to_row
from tallygate.sqlite_wal import use_wal
from tallygate.types import CallRecord

T = TypeVar("T")

_INSERT = f"INSERT OR IGNORE INTO calls ({', '.join(quote(c) for c in COLUMN_NAMES)})"
_WIDTH = len(COLUMN_NAMES)


class SqliteLedger(SqlReads):
    """`LedgerStore` on a SQLite file (or `:memory:`)."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: str, url: str) -> None:
        self.path = path
        self.url = url
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tg-ledger-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> SqliteLedger:
        await self._call(self._open_sync)
        return self

    def _open_sync(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                use_wal(conn, 5000)
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate_sqlite(conn, time.time())
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open ledger {self.url}: {exc}") from exc
        self._conn = conn

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args))

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"ledger {self.url} is closed")
        return self._conn

    async def write_batch(self, rows: Sequence[CallRecord]) -> None:
        if rows:
            values = [to_row(r) for r in rows]
            await self._call(self._write_sync, values)

    def _write_sync(self, values: list[tuple[Any, ...]]) -> None:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            insert_rows(conn, _INSERT, _WIDTH, values)  # (ledger/bulk.py: few steps)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._call(self._query_sync, sql, tuple(params))

    def _query_sync(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._db().execute(sql, params).fetchall()

    async def close(self) -> None:
        if self._conn is not None:
            await self._call(self._close_sync)
        self._pool.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

