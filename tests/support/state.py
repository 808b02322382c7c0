"""State-store test helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from tallygate.state import StateStore
from tallygate.state.sqlite_owner import OwnedSqliteStore
from tallygate.types import Hold, Window

BACKENDS = ["memory", "sqlite", "sqlite-owner", "redis"]
T0 = 1_718_000_000.0  # 2024-06-10T06:13:20Z, mid-day
DAY_START = T0 - T0 % 86400

StoreFactory = Callable[..., Awaitable[StateStore]]


def tokens(key: str, amount: int, limit: int, window: Window = Window.DAY,
           rolling: bool = False) -> Hold:
    return Hold(key=key, amount=amount, limit=limit, window=window, rolling=rolling)


async def used_reserved(store: Any, key: str, limit: int = 1000,
                        window: Window = Window.DAY, rolling: bool = False,
                        now: float = T0) -> tuple[int, int]:
    u = await store.usage(key, limit=limit, window=window, rolling=rolling, now=now)
    return u.used, u.reserved


async def abandon(store: OwnedSqliteStore) -> None:
    """Leave an owner as a killed process would (OwnedSqliteStore.abandon)."""
    await store.abandon()


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Any]:
    """A Redis client of the test's own on `url`: tests look at what a store wrote as any
    other client of the server would, never through the store's connection."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
