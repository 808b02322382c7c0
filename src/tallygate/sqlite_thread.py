"""One SQLite connection on its own worker thread, for the small tables that live in the
ledger's file (virtual keys, fired alerts): the event loop never waits on the file, WAL and
a busy timeout let several processes share it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tallygate.errors import StoreUnavailable, TallygateError
from tallygate.sqlite_wal import use_wal


class SqliteThread:
    """`run(fn, *args)` calls `fn` on the thread; `fn` reaches the connection by `db()`.

    `unavailable` starts the StoreUnavailable message of a failed statement; `closed`
    makes the error for use after `close()`."""

    def __init__(self, path: str, thread_name: str, *, unavailable: str,
                 closed: Callable[[], TallygateError]) -> None:
        self.path = path
        self._unavailable = unavailable
        self._closed = closed
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._conn: sqlite3.Connection | None = None

    async def connect(self, prepare: Callable[[sqlite3.Connection], None]) -> None:
        """Open the file (WAL, 10 s busy timeout) and run `prepare` (pragmas, schema) on
        the thread. A sqlite3.Error is raised as it is, and the thread is let go."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._connect, prepare)
        except sqlite3.Error:
            self._pool.shutdown(wait=False)
            raise

    def _connect(self, prepare: Callable[[sqlite3.Connection], None]) -> None:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        use_wal(conn, 10_000)
        prepare(conn)
        self._conn = conn

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"{self._unavailable}: {exc}") from exc

    def db(self) -> sqlite3.Connection:
        """The connection (on the thread only)."""
        if self._conn is None:
            raise self._closed()
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        if self._conn is not None:
            await self.run(self._close)
        # The thread has nothing left to run: let it end by itself rather than join it
        # on the event loop (a join is a blocking wait).
        self._pool.shutdown(wait=False)
