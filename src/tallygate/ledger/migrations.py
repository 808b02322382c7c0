"""Versioned ledger schema, the same logical schema for SQLite and PostgreSQL.

Migrations are numbered and append-only: never edit a released one, add the next number.
`schema_version` records what was applied; each pending migration runs in one transaction
at open, so opening twice (or from several replicas at once) is harmless. On PostgreSQL an
advisory lock serialises replicas that start together.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

from tallygate.ledger import rollups

Dialect = Literal["sqlite", "postgres"]

# The calls table as version 1 created it (released: never edit).
_V1_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "text not null"),
    ("ts", "real not null"),
    ("outcome", "text not null"),
    ("status", "int not null"),
    ("attempt", "int not null"),
    ("key_id", "text"),
    ("user", "text"),
    ("plan", "text"),
    ("feature", "text"),
    ("run", "text"),
    ("step", "text"),
    ("step_attempt", "int"),
    ("provider", "text"),
    ("model_requested", "text"),
    ("model_used", "text"),
    ("input_tokens", "int not null"),
    ("output_tokens", "int not null"),
    ("cached_tokens", "int not null"),
    ("cache_write_tokens", "int not null"),
    ("reasoning_tokens", "int not null"),
    ("exact", "bool not null"),
    ("cost_nusd", "int not null"),
    ("latency_ms", "int not null"),
    ("ttft_ms", "int"),
    ("retries", "int not null"),
    ("error_code", "text"),
    ("tokens_saved", "int not null"),
    ("trimmed_tokens", "int not null"),
    ("stream", "bool not null"),
    ("detail", "text"),
    ("content", "text"),
)

# Today's columns: one per CallRecord field, in field order (version 2: the server-minted
# request_id alone is the key; the caller's own id and the upstream time are columns).
COLUMNS: tuple[tuple[str, str], ...] = tuple(
    c for c in (
        *_V1_COLUMNS[:4], ("client_request_id", "text"), *_V1_COLUMNS[5:24],
        ("upstream_ms", "int"), *_V1_COLUMNS[24:],
    )
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"text": "TEXT", "real": "REAL", "int": "INTEGER", "bool": "INTEGER"},
    "postgres": {"text": "TEXT", "real": "DOUBLE PRECISION", "int": "BIGINT", "bool": "BOOLEAN"},
}


def quote(name: str) -> str:
    """Quote an identifier (`user` is reserved in PostgreSQL)."""
    return f'"{name}"'


def _table(dialect: Dialect, name: str, columns: tuple[tuple[str, str], ...],
           key: str) -> str:
    cols = []
    for column, kind in columns:
        base, _, rest = kind.partition(" ")
        null = " NOT NULL" if rest == "not null" else ""
        cols.append(f"{quote(column)} {_TYPES[dialect][base]}{null}")
    cols.append(f"PRIMARY KEY ({key})")
    return f"CREATE TABLE IF NOT EXISTS {name} (\n  " + ",\n  ".join(cols) + "\n)"


_INDEXES = (
    "CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts)",
    "CREATE INDEX IF NOT EXISTS calls_feature_ts ON calls (feature, ts)",
    'CREATE INDEX IF NOT EXISTS calls_user_ts ON calls ("user", ts)',
    "CREATE INDEX IF NOT EXISTS calls_run_step ON calls (run, step, step_attempt)",
    "CREATE INDEX IF NOT EXISTS calls_step_ts ON calls (step, ts)",
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str

    def statements(self, dialect: Dialect) -> list[str]:
        return _STATEMENTS[self.version](dialect)


def _v1(dialect: Dialect) -> list[str]:
    return [_table(dialect, "calls", _V1_COLUMNS, "request_id, attempt"), *_INDEXES]


def _v2(dialect: Dialect) -> list[str]:
    """Keyed on the server-minted request_id alone (attempt was always 0: one row per
    call); client_request_id and upstream_ms become columns."""
    if dialect == "postgres":
        return [
            "ALTER TABLE calls DROP CONSTRAINT IF EXISTS calls_pkey",
            "ALTER TABLE calls DROP COLUMN attempt",
            "ALTER TABLE calls ADD COLUMN client_request_id TEXT",
            "ALTER TABLE calls ADD COLUMN upstream_ms BIGINT",
            "ALTER TABLE calls ADD PRIMARY KEY (request_id)",
        ]
    # SQLite cannot change a primary key in place: copy into a new table.
    kept = ", ".join(quote(name) for name, _ in COLUMNS
                     if name not in ("client_request_id", "upstream_ms"))
    return [
        _table(dialect, "calls_v2", COLUMNS, "request_id"),
        f"INSERT OR IGNORE INTO calls_v2 ({kept}) SELECT {kept} FROM calls",
        "DROP TABLE calls",
        "ALTER TABLE calls_v2 RENAME TO calls",
        *_INDEXES,
    ]


_STATEMENTS = {1: _v1, 2: _v2, 3: rollups.statements, 4: rollups.owned_runs_statements}
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "calls table and its indexes"),
    Migration(2, "one row per call: keyed on request_id; client_request_id, upstream_ms"),
    Migration(3, "hourly and daily rollups kept by a trigger (ledger/rollups.py)"),
    Migration(4, "daily run rollups per owner (rollup_runs), as run budgets are scoped"),
)
LATEST = MIGRATIONS[-1].version

_VERSION_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)",
    "postgres": "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION "
    "NOT NULL)",
}


def migrate_sqlite(conn: sqlite3.Connection, now: float) -> list[int]:
    """Apply pending migrations; returns the versions applied now. `conn` must be in
    autocommit mode (isolation_level=None) so we control the transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_VERSION_TABLE["sqlite"])
        done = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
        applied = []
        for m in MIGRATIONS:
            if m.version in done:
                continue
            for sql in m.statements("sqlite"):
                conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_version VALUES (?, ?, ?)", (m.version, m.description, now)
            )
            applied.append(m.version)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied


_PG_LOCK_ID = 0x7A11_6A7E  # advisory lock id: serialises replicas migrating at once


async def migrate_postgres(conn: Any, now: float) -> list[int]:
    """Apply pending migrations on a psycopg AsyncConnection (one transaction)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_ID,))
        await conn.execute(_VERSION_TABLE["postgres"])
        cur = await conn.execute("SELECT version FROM schema_version")
        done = {row[0] for row in await cur.fetchall()}
        applied = []
        for m in MIGRATIONS:
            if m.version in done:
                continue
            for sql in m.statements("postgres"):
                await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_version VALUES (%s, %s, %s)", (m.version, m.description, now)
            )
            applied.append(m.version)
    return applied
