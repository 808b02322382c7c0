"""State-store test helpers."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from tallygate.state import StateStore
from tallygate.state.file_lock import release
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
    """Leave an owner as a killed process would: its journal and its last snapshot,
    nothing written since, the lock gone. (A snapshot already running in its thread is
    let finish: a thread cannot be killed; test_state_owner.py SIGKILLs a real process.)"""
    if store._flush_timer is not None:
        store._flush_timer.cancel()
        store._flush_timer = None
    if store._flushing is not None:
        await store._flushing
    store._closing = True
    current = store._journal._current
    for segment in [*store._unwritten, *([current] if current else [])]:
        os.close(segment.fd)
    await store._flags.close()
    store._reader.close()
    store._db.close()
    release(store._lock)
    store._lock = None
