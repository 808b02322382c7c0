"""SQLite and PostgreSQL key stores over one small shared schema (`tg_keys`).

Statements are written once with `?` placeholders; PostgreSQL gets them as `%s`. SQLite
runs on one worker thread (WAL, busy timeout) so the event loop never blocks and several
processes can share the file; PostgreSQL uses one psycopg 3 async connection, serialised
by a lock (key lookups are cached by `CachedKeyStore`, so traffic here is low).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import orjson

from tallygate.errors import ConfigError
from tallygate.extras import needs
from tallygate.keys.base import BaseKeyStore, Clock
from tallygate.keys.model import VirtualKey
from tallygate.pg_link import PgLink
from tallygate.sqlite_thread import SqliteThread

_FIELDS = ("id, name, user_id, plan, features, models, limits, created_at, revoked_at, "
           "expires_at")


def schema(integer: str) -> str:
    return (
        "CREATE TABLE IF NOT EXISTS tg_keys ("
        " id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, name TEXT,"
        " user_id TEXT NOT NULL, plan TEXT NOT NULL, features TEXT NOT NULL,"
        f" models TEXT NOT NULL, limits TEXT NOT NULL, created_at {integer} NOT NULL,"
        f" revoked_at {integer}, expires_at {integer})"
    )


def add_expiry(integer: str, *, if_not_exists: bool = False) -> str:
    """Tables made before keys could expire get the column."""
    guard = " IF NOT EXISTS" if if_not_exists else ""
    return f"ALTER TABLE tg_keys ADD COLUMN{guard} expires_at {integer}"


INSERT = f"INSERT INTO tg_keys (hash, {_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
BY_HASH = f"SELECT hash, {_FIELDS} FROM tg_keys WHERE hash = ?"
BY_ID = f"SELECT hash, {_FIELDS} FROM tg_keys WHERE id = ?"
LIST_ALL = f"SELECT hash, {_FIELDS} FROM tg_keys ORDER BY created_at, id"
LIST_ACTIVE = (
    f"SELECT hash, {_FIELDS} FROM tg_keys WHERE revoked_at IS NULL ORDER BY created_at, id"
)
REVOKE = "UPDATE tg_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
EXISTS = "SELECT 1 FROM tg_keys WHERE id = ?"
UPDATE = ("UPDATE tg_keys SET name = ?, plan = ?, features = ?, models = ?, limits = ?, "
          "expires_at = ? WHERE id = ? AND revoked_at IS NULL")
REHASH = "UPDATE tg_keys SET hash = ? WHERE id = ? AND revoked_at IS NULL"


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def key_params(key: VirtualKey, digest: str) -> tuple[Any, ...]:
    return (digest, key.id, key.name, key.user, key.plan, _json(list(key.features)),
            _json(list(key.models)), _json(key.limits), key.created_at, key.revoked_at,
            key.expires_at)


def update_params(key: VirtualKey) -> tuple[Any, ...]:
    return (key.name, key.plan, _json(list(key.features)), _json(list(key.models)),
            _json(key.limits), key.expires_at, key.id)


def key_from_row(row: Sequence[Any]) -> tuple[VirtualKey, str]:
    digest, kid, name, user, plan, features, models, limits, created, revoked, expires = row
    key = VirtualKey(
        id=kid, name=name, user=user, plan=plan,
        features=tuple(orjson.loads(features)), models=tuple(orjson.loads(models)),
        limits=dict(orjson.loads(limits)), created_at=int(created),
        revoked_at=None if revoked is None else int(revoked),
        expires_at=None if expires is None else int(expires),
    )
    return key, digest


class SqliteKeyStore(BaseKeyStore):
    """Keys in a SQLite file (the ledger's file by default), table `tg_keys`."""

    def __init__(self, path: str, clock: Clock = time.time) -> None:
        super().__init__(clock)
        self._sqlite = SqliteThread(path, "tg-keys", unavailable="Key store unavailable",
                                    closed=lambda: ConfigError("key store is closed"))

    @classmethod
    async def open(cls, path: str, *, clock: Clock = time.time) -> SqliteKeyStore:
        if not path:
            raise ConfigError("sqlite key store needs a path: sqlite:///PATH")
        store = cls(path, clock)
        try:
            await store._sqlite.connect(_prepare)
        except sqlite3.Error as exc:
            raise ConfigError(f"Cannot open key store {path!r}: {exc}") from None
        return store

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._sqlite.db().execute(sql, params).fetchall()

    def _revoke_sync(self, key_id: str, now: int) -> bool:
        db = self._sqlite.db()
        if db.execute(REVOKE, (now, key_id)).rowcount:
            return True
        return db.execute(EXISTS, (key_id,)).fetchone() is not None

    async def _insert(self, key: VirtualKey, digest: str) -> None:
        await self._sqlite.run(self._fetch, INSERT, key_params(key, digest))

    def _replace_sync(self, key: VirtualKey) -> bool:
        return bool(self._sqlite.db().execute(UPDATE, update_params(key)).rowcount)

    def _rehash_sync(self, key_id: str, digest: str) -> bool:
        return bool(self._sqlite.db().execute(REHASH, (digest, key_id)).rowcount)

    async def _rehash(self, key_id: str, digest: str) -> bool:
        return bool(await self._sqlite.run(self._rehash_sync, key_id, digest))

    async def _replace(self, key: VirtualKey) -> bool:
        return bool(await self._sqlite.run(self._replace_sync, key))

    async def _find_by_hash(self, digest: str) -> tuple[VirtualKey, str] | None:
        rows = await self._sqlite.run(self._fetch, BY_HASH, (digest,))
        return key_from_row(rows[0]) if rows else None

    async def _mark_revoked(self, key_id: str, now: int) -> bool:
        return bool(await self._sqlite.run(self._revoke_sync, key_id, now))

    async def get(self, key_id: str) -> VirtualKey | None:
        rows = await self._sqlite.run(self._fetch, BY_ID, (key_id,))
        return key_from_row(rows[0])[0] if rows else None

    async def list(self, include_revoked: bool = False) -> list[VirtualKey]:
        rows = await self._sqlite.run(self._fetch, LIST_ALL if include_revoked else LIST_ACTIVE,
                                      ())
        return [key_from_row(row)[0] for row in rows]

    async def close(self) -> None:
        await self._sqlite.close()


def _prepare(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(schema("INTEGER"))
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tg_keys)")}
    if "expires_at" not in columns:
        try:
            conn.execute(add_expiry("INTEGER"))
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresKeyStore(BaseKeyStore):
    """Keys in PostgreSQL (shared by every gateway replica), table `tg_keys`."""

    def __init__(self, link: PgLink, clock: Clock = time.time) -> None:
        super().__init__(clock)
        self._link = link

    @classmethod
    async def open(cls, url: str, *, clock: Clock = time.time) -> PostgresKeyStore:
        with needs("postgres", "a postgresql:// key store"):
            import psycopg

        link = PgLink(url, "Key store")
        try:
            conn = await link.connect()
            async with conn.transaction():
                # Replicas starting together must not race on CREATE TABLE.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tg_keys'))")
                await conn.execute(schema("BIGINT"))
                await conn.execute(add_expiry("BIGINT", if_not_exists=True))
        except psycopg.Error as exc:
            raise ConfigError(f"Cannot open the key store: {exc}".strip()) from None
        return cls(link, clock)

    async def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """A read: sent once more on a fresh connection when the first try finds the old
        one lost (how a restarted server shows), so verification does not fail a call."""
        async def fetch(conn: Any) -> list[tuple[Any, ...]]:
            cur = await conn.execute(_pg(sql), params)
            return list(await cur.fetchall())

        return await self._link.idempotent(fetch)

    async def _insert(self, key: VirtualKey, digest: str) -> None:
        async with self._link.use() as conn:  # not resent: it may have committed
            await conn.execute(_pg(INSERT), key_params(key, digest))

    async def _replace(self, key: VirtualKey) -> bool:
        async with self._link.use() as conn:
            cur = await conn.execute(_pg(UPDATE), update_params(key))
            return bool(cur.rowcount)

    async def _find_by_hash(self, digest: str) -> tuple[VirtualKey, str] | None:
        rows = await self._fetch(BY_HASH, (digest,))
        return key_from_row(rows[0]) if rows else None

    async def _rehash(self, key_id: str, digest: str) -> bool:
        async with self._link.use() as conn:
            cur = await conn.execute(_pg(REHASH), (digest, key_id))
            return bool(cur.rowcount)

    async def _mark_revoked(self, key_id: str, now: int) -> bool:
        async with self._link.use() as conn:
            cur = await conn.execute(_pg(REVOKE), (now, key_id))
            if cur.rowcount:
                return True
            cur = await conn.execute(_pg(EXISTS), (key_id,))
            return await cur.fetchone() is not None

    async def get(self, key_id: str) -> VirtualKey | None:
        rows = await self._fetch(BY_ID, (key_id,))
        return key_from_row(rows[0])[0] if rows else None

    async def list(self, include_revoked: bool = False) -> list[VirtualKey]:
        rows = await self._fetch(LIST_ALL if include_revoked else LIST_ACTIVE, ())
        return [key_from_row(row)[0] for row in rows]

    async def close(self) -> None:
        await self._link.close()
