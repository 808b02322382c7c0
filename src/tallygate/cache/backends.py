"""Where cache entries live: memory (tests, one process), sqlite (a file), redis
(shared by replicas) or a directory (file:///DIR, one file per entry: directory.py).
A backend stores opaque bytes with a TTL; signing and expiry checks are the
ResponseCache's job (cache/signed.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from tallygate.errors import ConfigError
from tallygate.extras import needs, redis_client_identity
from tallygate.sqlite_wal import use_wal


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def close(self) -> None: ...


class MemoryBackend:
    """A dict; expiry is checked from the signed envelope, so no clock here."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.entries.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        del ttl
        self.entries[key] = value

    async def close(self) -> None:
        self.entries.clear()


PURGE_EVERY = 256  # SQLite: writes between deletions of expired entries


class SqliteBackend:
    """One table in a file. A hit is a primary-key read of a WAL database, done on the
    event loop: it never waits for a writer, and a thread hop (behind a lock) cost more
    than the read and made every hit queue behind the others (bench/overhead.py: the
    cache-hit gateway served fewer requests/s at 32 clients than an uncached one).
    Writes (misses) run in a thread; expired entries are purged every PURGE_EVERY."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        use_wal(self._db, 5000)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tg_cache (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
            " expires REAL NOT NULL)"
        )
        self._lock = asyncio.Lock()
        self._writes = 0
        self._reader: sqlite3.Connection | None = None
        if path != ":memory:":  # (`:memory:` is private to its one connection)
            self._reader = sqlite3.connect(path, check_same_thread=False,
                                           isolation_level=None)
            self._reader.execute("PRAGMA busy_timeout = 0")  # never wait on the loop
            self._reader.execute("PRAGMA query_only = 1")

    async def get(self, key: str) -> bytes | None:
        if self._reader is not None:
            try:
                return _read(self._reader, key)
            except sqlite3.OperationalError:  # busy (the WAL being reset): wait in a thread
                pass
        async with self._lock:
            return await asyncio.to_thread(_read, self._db, key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._writes += 1
        purge = self._writes % PURGE_EVERY == 0
        async with self._lock:
            await asyncio.to_thread(self._write, key, value, time.time() + ttl, purge)

    def _write(self, key: str, value: bytes, expires: float, purge: bool) -> None:
        self._db.execute("INSERT OR REPLACE INTO tg_cache (key, value, expires) "
                         "VALUES (?, ?, ?)", (key, value, expires))
        if purge:  # wall-clock housekeeping only; the signed envelope decides expiry
            self._db.execute("DELETE FROM tg_cache WHERE expires < ?", (time.time(),))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._db.close()


def _read(db: sqlite3.Connection, key: str) -> bytes | None:
    row = db.execute("SELECT value, expires FROM tg_cache WHERE key = ?", (key,)).fetchone()
    if row is None or row[1] < time.time():  # (an expired row goes at the next purge)
        return None
    return bytes(row[0])


class RedisBackend:
    """`SET key value PX ttl`: redis expires entries itself."""

    def __init__(self, url: str, prefix: str = "tg:cache:") -> None:
        with needs("redis", "a redis:// response cache"):
            import redis.asyncio as redis

        self._client = redis.from_url(url, **redis_client_identity())
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(self._prefix + key)
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._client.set(self._prefix + key, value, px=max(1, int(ttl * 1000)))

    async def close(self) -> None:
        await self._client.aclose()


def backend_url(configured: str | None, state_url: str) -> str:
    """cache.backend, else beside the state store: redis → the same redis, sqlite →
    `<state file>.cache` next to it, memory → memory."""
    if configured:
        return configured
    if state_url.startswith(("redis://", "rediss://")):
        return state_url
    if state_url.startswith("sqlite:///") and state_url != "sqlite:///:memory:":
        return state_url + ".cache"
    return "memory://"


def open_backend(url: str) -> CacheBackend:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryBackend()
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"cache.backend {url!r}: expected sqlite:///PATH")
        return SqliteBackend(path)
    if scheme in ("redis", "rediss"):
        return RedisBackend(url)
    if scheme == "file":
        from tallygate.cache.directory import DirectoryBackend

        path = url[len("file://"):]
        if not path.startswith("/"):
            raise ConfigError(f"cache.backend {url!r}: expected file:///ABSOLUTE/DIR")
        return DirectoryBackend(path)
    raise ConfigError(f"cache.backend {url!r}: expected memory://, sqlite:///PATH, "
                      "redis://HOST:PORT/DB or file:///DIR")
