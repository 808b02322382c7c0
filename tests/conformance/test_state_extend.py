"""StateStore.extend on every backend: a held reservation grows atomically, all lines or
none, only within every limit, and its lease is renewed; one not held is refused."""

from __future__ import annotations

import asyncio

import pytest

from tallygate.errors import InvalidRequest
from tallygate.state import StateStore
from tallygate.types import Denial, Hold, Metric, NotHeld, Window
from tests.support.state import (
    DAY_START,
    T0,
    StoreFactory,
    redis_client,
    tokens,
    used_reserved,
)

LINES = [tokens("a", 300, 1000), tokens("b", 300, 500),
         Hold("c", 1_000, 9_000, Window.MONTH, Metric.COST),
         Hold("q", 1, 10, Window.MINUTE, Metric.REQUESTS)]


async def test_extend_grows_every_line_of_the_metric_and_settle_replaces_it(
    store: StateStore,
) -> None:
    assert await store.reserve("r", LINES, lease=60, now=T0) is None
    assert await store.extend("r", {"tokens": 150}, lease=60, now=T0 + 1) is None
    assert await used_reserved(store, "a", now=T0 + 1) == (0, 450)
    assert await used_reserved(store, "b", 500, now=T0 + 1) == (0, 450)
    assert await used_reserved(store, "c", 9_000, Window.MONTH, now=T0 + 1) == (0, 1_000)
    assert await store.extend("r", {"cost": 500, "tokens": 0}, lease=60, now=T0 + 2) is None
    assert await used_reserved(store, "c", 9_000, Window.MONTH, now=T0 + 2) == (0, 1_500)
    # Settling replaces the grown hold: no overrun up to it, overrun past it.
    result = await store.settle("r", {"tokens": 470, "cost": 1_400, "requests": 1},
                                now=T0 + 3)
    assert result.charged == {"a": 470, "b": 470, "c": 1_400, "q": 1}
    assert result.overrun == {"a": 20, "b": 20}
    assert await used_reserved(store, "a", now=T0 + 3) == (470, 0)
    assert await used_reserved(store, "c", 9_000, Window.MONTH, now=T0 + 3) == (1_400, 0)


async def test_extend_is_all_or_nothing_and_exact_at_the_limit(store: StateStore) -> None:
    await store.reserve("other", [tokens("b", 100, 500)], lease=60, now=T0)
    await store.reserve("r", LINES, lease=60, now=T0)
    denial = await store.extend("r", {"tokens": 101}, lease=60, now=T0)
    assert isinstance(denial, Denial)
    assert (denial.key, denial.limit, denial.used, denial.requested) == ("b", 500, 400, 101)
    assert (denial.window, denial.metric) == (Window.DAY, Metric.TOKENS)
    assert denial.reset_at == DAY_START + 86400
    assert await used_reserved(store, "a") == (0, 300)  # nothing grew
    assert await store.extend("r", {"tokens": 100}, lease=60, now=T0) is None  # exactly
    assert await used_reserved(store, "b", 500) == (0, 500)
    assert await store.extend("r", {"tokens": 1}, lease=60, now=T0) is not None
    # A refusal renews nothing: the lease still ends at T0 + 60.
    assert isinstance(await store.extend("r", {"tokens": 1}, lease=600, now=T0 + 60),
                      NotHeld)


async def test_extend_renews_the_lease(store: StateStore) -> None:
    await store.reserve("r", [tokens("k", 200, 1000)], lease=10, now=T0)
    assert await store.extend("r", {"tokens": 50}, lease=10, now=T0 + 8) is None
    assert await used_reserved(store, "k", now=T0 + 17.9) == (0, 250)  # past the first lease
    assert await used_reserved(store, "k", now=T0 + 18) == (0, 0)  # the renewed one ended
    assert await store.extend("r", {}, lease=10, now=T0 + 18) == NotHeld("r", "expired")
    result = await store.settle("r", {"tokens": 240}, now=T0 + 19)  # still charged
    assert result.charged == {"k": 240}
    assert await used_reserved(store, "k", now=T0 + 19) == (240, 0)


async def test_extend_of_nothing_held_is_refused_and_changes_nothing(
    store: StateStore,
) -> None:
    hold = [tokens("k", 100, 1000)]
    assert await store.extend("never", {"tokens": 5}, lease=60, now=T0) == \
        NotHeld("never", "unknown")
    await store.reserve("s", hold, lease=60, now=T0)
    await store.settle("s", {"tokens": 40}, now=T0)
    assert await store.extend("s", {"tokens": 5}, lease=60, now=T0) == NotHeld("s", "settled")
    await store.reserve("r", hold, lease=60, now=T0)
    await store.release("r", now=T0)
    assert await store.extend("r", {"tokens": 5}, lease=60, now=T0) == \
        NotHeld("r", "released")
    await store.reserve("e", hold, lease=5, now=T0)  # expired, never touched since
    assert await store.extend("e", {"tokens": 5}, lease=60, now=T0 + 5) == \
        NotHeld("e", "expired")
    await store.reserve("x", hold, lease=5, now=T0)  # expired and reclaimed
    assert await used_reserved(store, "k", now=T0 + 6) == (40, 0)
    assert await store.extend("x", {"tokens": 5}, lease=60, now=T0 + 6) == \
        NotHeld("x", "expired")
    assert await used_reserved(store, "k", now=T0 + 6) == (40, 0)


async def test_extend_checks_the_bucket_of_the_hold_and_rolling_windows_now(
    store: StateStore,
) -> None:
    midnight = DAY_START + 86400
    day = [tokens("k", 900, 1000), tokens("t", 0, 5000, Window.MONTH)]  # (mid-month)
    await store.reserve("old", day, lease=600, now=midnight - 1)
    denial = await store.extend("old", {"tokens": 101}, lease=600, now=midnight - 0.5)
    assert isinstance(denial, Denial) and (denial.key, denial.used) == ("k", 900)
    assert await store.reserve("new", [tokens("k", 1000, 1000)], lease=600,
                               now=midnight + 1) is None  # a new day
    # Yesterday's window ended: its bucket no longer limits the call begun in it (settle
    # charges the call there); its other lines still do.
    assert await store.extend("old", {"tokens": 3000}, lease=600, now=midnight + 2) is None
    denial = await store.extend("old", {"tokens": 2001}, lease=600, now=midnight + 2)
    assert isinstance(denial, Denial) and (denial.key, denial.used) == ("t", 3000)
    assert await used_reserved(store, "k", now=midnight + 2) == (0, 1000)
    result = await store.settle("old", {"tokens": 2500}, now=midnight + 3)
    assert result.charged == {"k": 2500, "t": 2500}
    assert await used_reserved(store, "k", now=midnight + 3) == (0, 1000)
    # Rolling minute: charges from 40 s ago still count, those from 61 s ago do not.
    roll = Window.MINUTE
    t = (T0 // 60) * 60 + 0.5
    await store.reserve("p", [tokens("m", 60, 100, roll, True)], lease=600, now=t)
    await store.settle("p", {"tokens": 60}, now=t)
    await store.reserve("s", [tokens("m", 10, 100, roll, True)], lease=600, now=t + 40)
    assert await store.extend("s", {"tokens": 31}, lease=600, now=t + 40) is not None
    assert await store.extend("s", {"tokens": 30}, lease=600, now=t + 40) is None
    assert await store.extend("s", {"tokens": 60}, lease=600, now=t + 61) is None
    assert await used_reserved(store, "m", 100, roll, True, now=t + 61) == (0, 100)


async def test_extend_bad_arguments_are_refused_clearly(store: StateStore) -> None:
    await store.reserve("r", [tokens("k", 10, 100)], lease=60, now=T0)
    with pytest.raises(InvalidRequest, match="did you mean 'tokens'"):
        await store.extend("r", {"token": 5}, lease=60, now=T0)
    with pytest.raises(InvalidRequest, match="more"):
        await store.extend("r", {"tokens": -1}, lease=60, now=T0)
    with pytest.raises(InvalidRequest, match="more"):
        await store.extend("r", {"tokens": 1.5}, lease=60, now=T0)  # type: ignore[dict-item]
    with pytest.raises(InvalidRequest, match="lease"):
        await store.extend("r", {"tokens": 1}, lease=0, now=T0)
    with pytest.raises(InvalidRequest, match="request_id"):
        await store.extend("", {"tokens": 1}, lease=60, now=T0)
    assert await used_reserved(store, "k", 100) == (0, 10)


async def test_concurrent_extensions_admit_exactly_what_fits(
    store_factory: StoreFactory,
) -> None:
    """100 concurrent extensions of 40 on a 1,000-token limit with 600 held: exactly 10,
    through several store objects (connections) sharing one state."""
    stores = [await store_factory() for _ in range(4)]
    await stores[0].reserve("big", [tokens("g", 600, 1000)], lease=600, now=T0)
    results = await asyncio.gather(*[
        stores[i % 4].extend("big", {"tokens": 40}, lease=600, now=T0) for i in range(100)])
    assert sum(r is None for r in results) == 10
    assert all(isinstance(r, Denial) and r.key == "g" for r in results if r is not None)
    assert await used_reserved(stores[1], "g") == (0, 1000)
    result = await stores[2].settle("big", {"tokens": 900}, now=T0)
    assert result.charged == {"g": 900} and result.overrun == {}
    assert await used_reserved(stores[3], "g") == (900, 0)


async def test_extensions_race_reservations_and_never_overspend(
    store_factory: StoreFactory,
) -> None:
    """Fresh reservations and extensions of held ones competing for the last room."""
    stores = [await store_factory() for _ in range(3)]
    for i in range(20):
        assert await stores[0].reserve(f"s{i}", [tokens("g", 20, 1000)], lease=600,
                                       now=T0) is None
    work = [stores[i % 3].extend(f"s{i % 20}", {"tokens": 30}, lease=600, now=T0)
            for i in range(40)]
    work += [stores[i % 3].reserve(f"n{i}", [tokens("g", 30, 1000)], lease=600, now=T0)
             for i in range(40)]
    results = await asyncio.gather(*work)
    admitted = sum(r is None for r in results)
    assert admitted == 20  # (1000 - 400) // 30
    assert await used_reserved(stores[1], "g") == (0, 400 + 30 * admitted)


async def test_redis_extend_is_one_script_call(redis_url: str) -> None:
    import uuid

    from tallygate.state.redis import RedisStore

    store = RedisStore(redis_url, namespace=uuid.uuid4().hex[:12])

    async def evalsha_calls() -> int:  # (server-wide counts, read by a client of our own)
        async with redis_client(redis_url) as redis:
            stats = await redis.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    await store.reserve("r", LINES, lease=60, now=T0)
    await store.extend("r", {"tokens": 1}, lease=60, now=T0)  # loads the script
    before = await evalsha_calls()
    for i in range(5):
        assert await store.extend("r", {"tokens": 10, "cost": i}, lease=60, now=T0) is None
    assert await evalsha_calls() == before + 5
    assert await used_reserved(store, "a") == (0, 351)
    await store.flush_namespace()
    await store.close()


async def test_a_rolling_line_whose_slot_left_the_window_still_checks_it(
    store: StateStore,
) -> None:
    """(Found by the state machine on Redis.) The hold's own slot left the rolling
    window; the window as it is now still limits the growth."""
    roll = Window.MINUTE
    t = (T0 // 60) * 60 + 0.5
    await store.reserve("long", [tokens("m", 0, 60, roll, True)], lease=600, now=t)
    await store.reserve("now", [tokens("m", 53, 60, roll, True)], lease=600, now=t + 61)
    denial = await store.extend("long", {"tokens": 8}, lease=600, now=t + 61)
    assert isinstance(denial, Denial) and denial.used == 53
    assert await store.extend("long", {"tokens": 7}, lease=600, now=t + 61) is None
