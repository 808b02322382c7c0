"""The lifetime window (`Window.RUN`) on every backend: one bucket that never resets,
and a counter nobody writes to for `run_ttl` counts as empty and is dropped."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tallygate.errors import InvalidRequest
from tallygate.state import StateStore, from_url
from tallygate.types import Hold, Metric, Window
from tests.support.state import T0, StoreFactory, abandon, redis_client

DAY = 86_400.0
RUN = Window.RUN


def run_hold(key: str, amount: int, limit: int = 1000, metric: Metric = Metric.TOKENS
             ) -> Hold:
    return Hold(key, amount, limit, RUN, metric)


async def used(store: StateStore, key: str, now: float, limit: int = 1000) -> tuple[int, int]:
    u = await store.usage(key, limit=limit, window=RUN, now=now)
    return u.used, u.reserved


async def test_lifetime_window_never_resets(store: StateStore) -> None:
    assert await store.reserve("a", [run_hold("r", 600)], lease=60, now=T0) is None
    await store.settle("a", {"tokens": 500}, now=T0)
    later = T0 + 20 * DAY  # months, days and minutes have all rolled over
    assert await used(store, "r", later) == (500, 0)
    denial = await store.reserve("b", [run_hold("r", 501)], lease=60, now=later)
    assert denial is not None and denial.used == 500 and denial.window is RUN
    assert denial.reset_at == math.inf
    usage = await store.usage("r", limit=1000, window=RUN, now=later)
    assert usage.reset_at == math.inf and usage.remaining == 500
    assert await store.reserve("c", [run_hold("r", 500)], lease=60, now=later) is None
    assert await store.extend("c", {"tokens": 1}, lease=60, now=later) is not None
    # The same key under a calendar window is another counter.
    assert (await store.usage("r", limit=1000, window=Window.DAY, now=T0)).used == 0


async def test_a_lifetime_window_cannot_roll(store: StateStore) -> None:
    with pytest.raises(InvalidRequest, match="cannot roll"):
        await store.reserve("a", [Hold("r", 1, 10, RUN, rolling=True)], lease=60, now=T0)


async def test_untouched_run_counters_expire_after_run_ttl(
    store_factory: StoreFactory, request: pytest.FixtureRequest,
) -> None:
    store = await store_factory(run_ttl=100.0)
    await store.reserve("a", [run_hold("old", 600), run_hold("kept", 100)], lease=10,
                        now=T0)
    await store.settle("a", {"tokens": 400}, now=T0)
    if store_factory.kind == "redis":  # type: ignore[attr-defined]
        # Redis judges by its own clock: each key lives run_ttl + lease after a write.
        prefix = store.key_prefix  # type: ignore[attr-defined]
        async with redis_client(request.getfixturevalue("redis_url")) as redis:
            names = [n async for n in redis.scan_iter(match=f"{prefix}:c:c:run:*")]
            assert len(names) == 2
            ttls = [await redis.ttl(name) for name in names]
        assert all(100 <= ttl <= 110 for ttl in ttls), ttls
        return
    await store.reserve("b", [run_hold("kept", 10)], lease=10, now=T0 + 50)
    await store.settle("b", {"tokens": 10}, now=T0 + 50)  # a write keeps it alive
    assert await used(store, "old", T0 + 100) == (400, 0)
    assert await used(store, "old", T0 + 100.5) == (0, 0)  # untouched for run_ttl
    assert await used(store, "kept", T0 + 100.5) == (410, 0)
    # A new call of the run starts from zero; the old usage does not come back.
    assert await store.reserve("c", [run_hold("old", 1000)], lease=10, now=T0 + 101) is None
    await store.settle("c", {"tokens": 7}, now=T0 + 101)
    assert await used(store, "old", T0 + 102) == (7, 0)
    assert await used(store, "kept", T0 + 151) == (0, 0)


# Redis expires keys by its own clock (run_ttl + the lease), not the callers' `now`: the
# stores whose time is the callers' are the ones this can be driven on.
@pytest.mark.parametrize("store_factory", ["memory", "sqlite", "sqlite-owner"], indirect=True)
async def test_a_held_run_counter_does_not_expire(store_factory: StoreFactory) -> None:
    store = await store_factory(run_ttl=100.0)
    await store.reserve("a", [run_hold("r", 300)], lease=500, now=T0)  # lease > run_ttl
    assert await used(store, "r", T0 + 200) == (0, 300)
    assert await store.extend("a", {"tokens": 100}, lease=500, now=T0 + 200) is None
    await store.settle("a", {"tokens": 350}, now=T0 + 250)
    assert await used(store, "r", T0 + 340) == (350, 0)
    assert await used(store, "r", T0 + 351) == (0, 0)


@pytest.mark.parametrize("owner", [False, True])
@pytest.mark.parametrize("crash", [False, True])
async def test_sqlite_keeps_run_write_times_across_restarts(
    tmp_path: Path, owner: bool, crash: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    opts = {"owner": True, "flush_seconds": 0.01} if owner else {}
    first = from_url(url, run_ttl=100.0, **opts)
    await first.reserve("a", [run_hold("r", 600)], lease=10, now=T0)
    await first.settle("a", {"tokens": 450}, now=T0 + 20)
    if crash and owner:
        await abandon(first)  # type: ignore[arg-type]
    else:
        await first.close()
    second = from_url(url, run_ttl=100.0, **opts)
    assert await used(second, "r", T0 + 120) == (450, 0)
    assert await used(second, "r", T0 + 121) == (0, 0)
    await second.close()


async def test_expired_run_counters_are_dropped(tmp_path: Path) -> None:
    """The stores forget expired run counters, not only read them as empty."""
    memory = from_url("memory://", run_ttl=100.0)
    shared = from_url(f"sqlite:///{tmp_path / 'shared.db'}", run_ttl=100.0)
    owned = from_url(f"sqlite:///{tmp_path / 'owned.db'}", run_ttl=100.0, owner=True,
                     flush_seconds=0.01)
    for store in (memory, shared, owned):
        for i in range(5):
            await store.reserve(f"r{i}", [run_hold(f"run{i}", 10)], lease=10, now=T0)
            await store.settle(f"r{i}", {"tokens": 5}, now=T0)
        await store.reserve("late", [run_hold("new", 10)], lease=10, now=T0 + 500)
    assert memory.in_memory[1] == ["c:run:new"]  # type: ignore[attr-defined]
    assert owned.in_memory[1] == ["c:run:new"]  # type: ignore[attr-defined]
    await owned.close()
    await shared.close()
    import sqlite3

    for name in ("shared.db", "owned.db"):
        db = sqlite3.connect(tmp_path / name)
        assert db.execute("SELECT counter FROM state_runs").fetchall() == [("c:run:new",)]
        assert db.execute("SELECT counter FROM state_cells").fetchall() == [("c:run:new",)]
        db.close()
    await memory.close()


@pytest.mark.parametrize("state", ["sqlite", "memory"])
async def test_the_policys_run_ttl_reaches_the_store(tmp_path: Path, state: str) -> None:
    from tallygate.config import Policy
    from tallygate.runtime import open_policy_state

    url = f"sqlite:///{tmp_path / 's.db'}" if state == "sqlite" else "memory://"
    policy = Policy.from_mapping({"storage": {"state": url, "run_ttl": "2h"}}, env={})
    store = await open_policy_state(policy, sole_process=True)
    await store.reserve("a", [run_hold("r", 10)], lease=60, now=T0)
    await store.settle("a", {"tokens": 10}, now=T0)
    assert await used(store, "r", T0 + 7200) == (10, 0)
    assert await used(store, "r", T0 + 7201) == (0, 0)
    await store.close()
