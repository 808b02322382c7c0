"""PostgreSQL ledger (several gateway replicas share it): psycopg 3 async connections in a
small pool, each batch in one transaction: COPY into a temporary table, then one
INSERT … SELECT … ON CONFLICT DO NOTHING."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from tallygate.errors import StoreUnavailable
from tallygate.extras import needs
from tallygate.ledger.migrations import COLUMN_NAMES, Dialect, migrate_postgres, quote
from tallygate.ledger.rows import SqlReads, to_row
from tallygate.pg_link import PgLink
from tallygate.types import CallRecord

_COLS = ", ".join(quote(c) for c in COLUMN_NAMES)
_STAGE = "CREATE TEMP TABLE IF NOT EXISTS calls_stage (LIKE calls) ON COMMIT DELETE ROWS"
_COPY = f"COPY calls_stage ({_COLS}) FROM STDIN"
_MERGE = (
    f"INSERT INTO calls ({_COLS}) SELECT {_COLS} FROM calls_stage "
    "ON CONFLICT (request_id) DO NOTHING"
)


def to_pg(sql: str) -> str:
    """`?` placeholders → psycopg's `%s` (our SQL has no literal `?` or `%`)."""
    return sql.replace("?", "%s")


class PostgresLedger(SqlReads):
    """`LedgerStore` on PostgreSQL."""

    dialect: Dialect = "postgres"

    def __init__(self, url: str, *, pool_size: int = 2) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncio.Queue[PgLink] = asyncio.Queue()
        self._links: list[PgLink] = []

    async def open(self) -> PostgresLedger:
        with needs("postgres", "a postgresql:// ledger"):
            import psycopg

        try:
            for _ in range(self.pool_size):
                link = PgLink(self.url, f"ledger {_safe(self.url)}")
                self._links.append(link)
                await link.connect()
                self._pool.put_nowait(link)
            async with self._links[0].use() as conn:
                await migrate_postgres(conn, time.time())
        except (psycopg.Error, StoreUnavailable) as exc:
            await self.close()
            raise StoreUnavailable(f"cannot open ledger {_safe(self.url)}: {exc}") from exc
        return self

    @asynccontextmanager
    async def _link(self) -> AsyncIterator[PgLink]:
        if not self._links:
            raise StoreUnavailable(f"ledger {_safe(self.url)} is closed")
        link = await self._pool.get()
        try:
            yield link
        finally:
            self._pool.put_nowait(link)

    async def write_batch(self, rows: Sequence[CallRecord]) -> None:
        if not rows:
            return
        values = [to_row(r) for r in rows]
        # One COPY into a staging table, one INSERT … SELECT: a single statement inserts
        # the batch, so the rollup trigger (a statement trigger) runs once per batch,
        # not once per row (per-row INSERTs made writes 2.6× slower with it).
        # Safe to send twice (rows already there are skipped): a batch that finds its
        # connection lost goes again at once on a fresh one.
        async def write(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(_STAGE)
                async with conn.cursor() as cur:
                    async with cur.copy(_COPY) as copy:
                        for row in values:
                            await copy.write_row(row)
                    await cur.execute(_MERGE)

        async with self._link() as link:
            await link.idempotent(write)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def fetch(conn: Any) -> list[tuple[Any, ...]]:
            cur = await conn.execute(to_pg(sql), tuple(params))
            return list(await cur.fetchall())

        async with self._link() as link:
            return await link.idempotent(fetch)

    async def close(self) -> None:
        links, self._links = self._links, []
        for link in links:
            await link.close()


def _safe(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}@{host}"
