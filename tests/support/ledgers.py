"""Ledgers for tests: a fresh SQLite file or PostgreSQL database per test, or a SQLite
file filled with given rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tallygate.ledger import open_ledger
from tallygate.types import CallRecord


def _admin(postgres_url: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(postgres_url, autocommit=True)


@contextmanager
def fresh_postgres(postgres_url: str) -> Iterator[str]:
    """A new database on the test server, dropped afterwards (connections terminated)."""
    name = f"tg_{uuid.uuid4().hex[:16]}"
    with _admin(postgres_url) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base = postgres_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with _admin(postgres_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def fresh_ledger_url(kind: str, tmp_path: Path, request) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """`kind` is "sqlite" or "postgres" (the latter uses the session `postgres_url`)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    with fresh_postgres(request.getfixturevalue("postgres_url")) as url:
        yield url


def sqlite_ledger(path: Path, rows: Iterable[CallRecord]) -> str:
    """The URL of a new SQLite ledger at `path` holding `rows` (for synchronous tests)."""
    url = f"sqlite:///{path}"

    async def fill() -> None:
        store = await open_ledger(url)
        try:
            await store.write_batch(list(rows))
        finally:
            await store.close()

    asyncio.run(fill())
    return url
