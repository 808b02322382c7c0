"""How the plain and the reading forms of the store operations derive from each other.

`ReadAlong`: reserve_and_read / finish_and_read for a store that answers them in two
steps: the operation and the usage reads are sent together (concurrently), so a networked
store pays one round-trip time, not three (GuardedStore, which must route each step
through its outage handling). `PlainFromRead`: reserve / settle / release for a store
whose native operations are the reading ones (SQLite, Redis: the reads ride in the same
transaction or script, and with nothing to read they cost nothing)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

from tallygate.types import Denial, Hold, LimitUsage, SettleResult

T = TypeVar("T")


class ReadAlong:
    """Mixin: the two combined operations built from reserve/settle/release/usage."""

    async def reserve_and_read(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float,
        read: Sequence[Hold],
    ) -> tuple[Denial | None, list[LimitUsage]]:
        store: Any = self
        denial, usages = await _along(
            store.reserve(request_id, holds, lease=lease, now=now), store, read, now)
        return denial, [] if denial is not None else usages

    async def finish_and_read(
        self, request_id: str, actual: Mapping[str, int] | None, *, now: float,
        read: Sequence[Hold],
    ) -> tuple[SettleResult, list[LimitUsage]]:
        store: Any = self
        if actual is None:
            _, usages = await _along(store.release(request_id, now=now), store, read, now)
            return SettleResult(), usages
        return await _along(store.settle(request_id, actual, now=now), store, read, now)


async def _along(operation: Awaitable[T], store: Any, read: Sequence[Hold], now: float
                 ) -> tuple[T, list[LimitUsage]]:
    """The operation's own failure propagates; a failed read only empties the list."""
    if not read:
        return await operation, []
    reads = [store.usage(h.key, limit=h.limit, window=h.window, rolling=h.rolling, now=now)
             for h in read]
    result, *usages = await asyncio.gather(operation, *reads, return_exceptions=True)
    if isinstance(result, BaseException):
        raise result
    found = [u for u in usages if isinstance(u, LimitUsage)]
    return result, found if len(found) == len(usages) else []


class PlainFromRead:
    """Mixin: reserve / settle / release as the *_and_read operations with no reads."""

    async def reserve(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float
    ) -> Denial | None:
        store: Any = self
        denial, _ = await store.reserve_and_read(request_id, holds, lease=lease, now=now,
                                                 read=())
        return denial

    async def settle(
        self, request_id: str, actual: Mapping[str, int], *, now: float
    ) -> SettleResult:
        """An expired reservation is still charged its actual usage (the call
        happened); its hold is freed exactly once, by whichever came first."""
        store: Any = self
        result, _ = await store.finish_and_read(request_id, actual, now=now, read=())
        return result

    async def release(self, request_id: str, *, now: float) -> None:
        store: Any = self
        await store.finish_and_read(request_id, None, now=now, read=())
