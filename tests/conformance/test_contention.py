"""No overspend under contention: 4 OS processes x 50 tasks race for one limit through
one Redis server and through one SQLite file. Every call reserves a random amount and
settles a random actual <= reserved; tasks stop only once denials persist."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tallygate.state import from_url
from tallygate.types import Hold, Window

LIMIT = 10_000
PROCESSES, TASKS = 4, 50
GIVE_UP_AFTER = 25  # consecutive denials before a task concludes the limit is full
NOW = 1_718_000_000.0  # fixed: the minute must not roll mid-test


async def _hammer(url: str, opts: dict[str, str], window: str, seed: int) -> int:
    store = from_url(url, **opts)
    rng = random.Random(seed)
    hold_window = Window(window)
    settled = 0

    async def task(t: int) -> int:
        total, denials, n = 0, 0, 0
        while denials < GIVE_UP_AFTER:
            n += 1
            amount = rng.randint(1, 150)
            rid = f"{seed}-{t}-{n}"
            hold = [Hold(f"global:tokens:{window}", amount, LIMIT, hold_window)]
            if await store.reserve(rid, hold, lease=300, now=NOW) is not None:
                denials += 1
                await asyncio.sleep(0.002 * rng.random())
                continue
            denials = 0
            actual = rng.randint(0, amount)
            await asyncio.sleep(0)  # the "call"
            await store.settle(rid, {"tokens": actual}, now=NOW)
            total += actual
        return total

    try:
        settled = sum(await asyncio.gather(*[task(t) for t in range(TASKS)]))
    finally:
        await store.close()
    return settled


def _worker(url: str, opts: dict[str, str], window: str, seed: int) -> int:
    return asyncio.run(_hammer(url, opts, window, seed))


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as p:
        yield p


async def _contend(pool: ProcessPoolExecutor, url: str, opts: dict[str, str],
                   window: Window) -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.run_in_executor(pool, _worker, url, opts, window.value, seed)
               for seed in range(PROCESSES)]
    settled = sum(await asyncio.gather(*futures))
    store = from_url(url, **opts)
    usage = await store.usage(f"global:tokens:{window.value}", limit=LIMIT, window=window,
                              now=NOW)
    await store.close()
    assert usage.reserved == 0
    assert usage.used == settled  # every settled actual counted, exactly
    assert usage.used <= LIMIT  # never overspent
    assert usage.used >= LIMIT * 95 // 100, usage  # and no needless rejections


@pytest.mark.slow
@pytest.mark.parametrize("window", [Window.DAY, Window.MINUTE])
async def test_redis_never_overspends_under_contention(
    pool: ProcessPoolExecutor, redis_url: str, window: Window
) -> None:
    await _contend(pool, redis_url, {"namespace": uuid.uuid4().hex[:12]}, window)


@pytest.mark.slow
@pytest.mark.parametrize("window", [Window.DAY, Window.MINUTE])
async def test_sqlite_never_overspends_under_contention(
    pool: ProcessPoolExecutor, tmp_path: Path, window: Window
) -> None:
    await _contend(pool, f"sqlite:///{tmp_path / 'contended.db'}", {}, window)
