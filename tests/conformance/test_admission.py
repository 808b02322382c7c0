"""Exact admission on every backend: concurrent reservations never oversubscribe."""

from __future__ import annotations

import asyncio

from tallygate.types import Hold, Window
from tests.support.state import T0, StoreFactory  # (the store fixtures: conftest.py)


async def test_100_concurrent_reservations_of_40_admit_exactly_25(
    store_factory: StoreFactory,
) -> None:
    # Four handles on the same state (one file / one namespace; one object for memory),
    # so the race is between connections, not only tasks of one client.
    handles = [await store_factory() for _ in range(4)]
    hold = [Hold("global:tokens:day", 40, 1000, Window.DAY)]
    results = await asyncio.gather(*[
        handles[i % 4].reserve(f"req-{i}", hold, lease=60, now=T0) for i in range(100)
    ])
    admitted = [i for i, denial in enumerate(results) if denial is None]
    assert len(admitted) == 25
    assert all(d.used == 1000 and d.requested == 40 for d in results if d is not None)
    usage = await handles[0].usage("global:tokens:day", limit=1000, window=Window.DAY, now=T0)
    assert (usage.used, usage.reserved, usage.remaining) == (0, 1000, 0)


async def test_third_limit_without_room_holds_nothing_on_the_first_two(
    store_factory: StoreFactory,
) -> None:
    s = await store_factory()
    await s.reserve("filler", [Hold("run:r1:tokens:day", 990, 1000, Window.DAY)],
                    lease=60, now=T0)
    holds = [Hold("global:tokens:day", 50, 10_000, Window.DAY),
             Hold("user:u1:tokens:day", 50, 1000, Window.DAY),
             Hold("run:r1:tokens:day", 50, 1000, Window.DAY)]
    results = await asyncio.gather(*[
        s.reserve(f"multi-{i}", holds, lease=60, now=T0) for i in range(10)])
    assert all(d is not None and d.key == "run:r1:tokens:day" for d in results)
    for key, limit in (("global:tokens:day", 10_000), ("user:u1:tokens:day", 1000)):
        usage = await s.usage(key, limit=limit, window=Window.DAY, now=T0)
        assert (usage.used, usage.reserved) == (0, 0)
