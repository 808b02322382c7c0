"""State stores: `open_state()` (async) or `from_url()` picks the backend by URL scheme.
The protocol is in `base.py`, the input checks every backend shares in `checks.py`."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from tallygate.errors import ConfigError
from tallygate.extras import needs
from tallygate.state.base import StateStore
from tallygate.state.checks import MAX_AMOUNT, check_actual, check_holds

__all__ = [
    "MAX_AMOUNT",
    "StateStore",
    "check_actual",
    "check_holds",
    "from_url",
    "open_state",
    "restart_warning",
]


def from_url(url: str, **opts: Any) -> StateStore:
    """memory://, sqlite:///PATH (or sqlite:///:memory:), redis://HOST:PORT/DB, rediss://.
    `owner=True` opens a SQLite file in owner mode (state/sqlite_owner.py)."""
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme == "memory":
        from tallygate.state.memory import MemoryStore

        return MemoryStore(**opts)
    if scheme == "sqlite":
        from tallygate.state.sqlite import SqliteStore

        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"state URL {url!r}: expected sqlite:///PATH or sqlite:///:memory:")
        if opts.pop("owner", False):  # one process keeps the limits in memory
            from tallygate.state.sqlite_owner import OwnedSqliteStore

            return OwnedSqliteStore(path, **opts)
        return SqliteStore(path, **opts)
    if scheme in ("redis", "rediss"):
        with needs("redis", "a redis:// state store"):
            from tallygate.state.redis import RedisStore

        return RedisStore(url, **opts)
    raise ConfigError(
        f"state URL {url!r}: unknown scheme {scheme!r}; expected memory://, "
        "sqlite:///PATH or redis://HOST:PORT/DB"
    )




async def open_state(url: str, **opts: Any) -> StateStore:
    """`from_url()` for async code: a SQLite store opens its file (and an owner replays its
    journal) in a thread, so the event loop never waits on the disk."""
    if isinstance(url, str) and urlsplit(url).scheme.lower() == "sqlite":
        return await asyncio.to_thread(from_url, url, **opts)
    return from_url(url, **opts)


async def restart_warning(url: str) -> str | None:
    """What a restart of the state store at `url` would make the limits forget, said for
    an operator, or None: a memory:// store lives in its process; Redis keeps what its
    persistence setting keeps (asked here, on a connection of its own); a file-backed
    SQLite store keeps everything it acknowledged. Raises StoreUnavailable when Redis
    does not answer."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return ("memory://: the limits live in this process; a restart forgets what every "
                "window has spent (use sqlite:///PATH, or Redis for several replicas)")
    if scheme not in ("redis", "rediss"):
        return None
    with needs("redis", "a redis:// state store"):
        from tallygate.state.redis import RedisStore
    store = RedisStore(url)
    try:
        found = await store.persistence()
    finally:
        await store.close()
    if found is None:
        return ("persistence not readable (CONFIG is not allowed here): make sure this "
                "Redis keeps an append-only file (appendonly yes), or a restart forgets "
                "what every limit's current window has spent")
    return found.warning()
