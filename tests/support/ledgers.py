"""Fresh, empty ledgers for tests: a SQLite file or a new PostgreSQL database per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
