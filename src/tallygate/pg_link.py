"""One PostgreSQL connection that comes back after the server went away.

psycopg keeps a connection object after the server has closed it (a restart, a failover,
an idle cut by a proxy): every later statement on it fails. A link makes the connection
again before the next use once psycopg knows it is closed or broken, turns a lost
connection into StoreUnavailable (the ledger writer keeps its rows and tries again, a
gateway refuses cleanly), and sends a statement that is safe to send twice (a read, an
insert that ignores a row already there) once more on a fresh connection, since the
first use of a stale one is how its loss shows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from tallygate.errors import StoreUnavailable

T = TypeVar("T")


class PgLink:
    """One autocommit psycopg 3 async connection, used by one caller at a time."""

    def __init__(self, url: str, what: str) -> None:
        self.url = url
        self.what = what  # "ledger", "key store"…: said in every error
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def connect(self) -> Any:
        """Make the connection now (psycopg.Error as it is: opening is a config check)."""
        import psycopg

        self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        return self._conn

    @asynccontextmanager
    async def use(self) -> AsyncIterator[Any]:
        """The connection, made again first if the server has closed it."""
        import psycopg

        async with self._lock:
            if self._conn is None:
                raise StoreUnavailable(f"{self.what} is closed")
            if self._conn.closed or self._conn.broken:
                await self._remake()
            try:
                yield self._conn
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"{self.what} unavailable: {exc}".strip()) from exc

    async def idempotent(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`fn(conn)` for statements safe to send twice: once more on a fresh
        connection when the first try finds the old one lost."""
        try:
            async with self.use() as conn:
                return await fn(conn)
        except StoreUnavailable:
            async with self.use() as conn:
                return await fn(conn)

    async def _remake(self) -> None:
        import psycopg

        old = self._conn
        try:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        except psycopg.Error as exc:  # still down: tried again at the next use
            raise StoreUnavailable(f"{self.what} unreachable: {exc}".strip()) from exc
        with contextlib.suppress(psycopg.Error):
            await old.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
