"""Virtual keys: stored as SHA-256 hashes, checked in constant time, cached for ≤ 1 s.

`open_keystore(url)` picks the backend by URL scheme: `keys/memory.py`, `keys/sql.py`
(SQLite and PostgreSQL), all of the `KeyStore` shape in `keys/base.py`."""

from __future__ import annotations

import time

from tallygate.errors import ConfigError
from tallygate.keys.base import UNSET, BaseKeyStore, Clock, KeyStore
from tallygate.keys.cache import CachedKeyStore
from tallygate.keys.memory import MemoryKeyStore
from tallygate.keys.model import VirtualKey, check_limits, parse_limit_items

__all__ = [
    "UNSET",
    "BaseKeyStore",
    "CachedKeyStore",
    "KeyStore",
    "MemoryKeyStore",
    "VirtualKey",
    "check_limits",
    "open_keystore",
    "parse_limit_items",
]


async def open_keystore(url: str, *, clock: Clock = time.time) -> KeyStore:
    """`memory://`, `sqlite:///PATH` or `postgresql://USER@HOST:PORT/DB`; the table
    `tg_keys` is created when missing."""
    if url.startswith("memory://"):
        return MemoryKeyStore(clock)
    if url.startswith("sqlite:///"):
        from tallygate.keys.sql import SqliteKeyStore

        return await SqliteKeyStore.open(url.removeprefix("sqlite:///"), clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        from tallygate.keys.sql import PostgresKeyStore

        return await PostgresKeyStore.open(url, clock=clock)
    scheme = url.split("://", 1)[0] if "://" in url else url[:32]
    raise ConfigError(
        f"Unsupported key store {scheme!r}: use memory://, sqlite:///PATH or postgresql://…"
    )
