"""Redis unavailable: fail_closed refuses with StoreUnavailable; fail_open admits,
counts locally and reconciles into Redis once it is back."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tallygate.errors import StoreUnavailable
from tallygate.state import from_url
from tallygate.state.guard import GuardedStore
from tallygate.state.memory import MemoryStore
from tallygate.types import Hold, LimitUsage, NotHeld, Window
from tests.support.servers import free_port, redis_server, wait_port
from tests.support.waiting import eventually_async

T0 = 1_718_000_000.0
DAY = [Hold("user:u1:tokens:day", 100, 1000, Window.DAY)]


@pytest.fixture
def own_redis() -> Iterator[subprocess.Popen[bytes]]:
    """A dedicated redis-server this test may pause (SIGSTOP) to cut it off."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tg-guard-") as tmp:
        proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, proc)
        proc.port = port  # type: ignore[attr-defined]
        try:
            yield proc
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(timeout=10)


async def test_fail_closed_raises_store_unavailable_fast() -> None:
    dead = from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    guard = GuardedStore(dead, "fail_closed")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await guard.reserve("r1", DAY, lease=60, now=T0)
    assert caught.value.status == 429 and caught.value.code == "store_unavailable"
    with pytest.raises(StoreUnavailable):  # during the outage: refused without waiting
        await guard.reserve("r2", DAY, lease=60, now=T0)
    with pytest.raises(StoreUnavailable):
        await guard.usage("user:u1:tokens:day", limit=1000, window=Window.DAY, now=T0)
    assert time.monotonic() - started < 2.0
    assert guard.degraded
    await guard.settle("r1", {"tokens": 5}, now=T0)  # never raises: queued for replay
    # r1's failed reserve is given back (a timeout may come after Redis applied it), and
    # its settle is replayed; r2 was refused without reaching Redis: nothing to undo.
    assert guard.pending == 2
    await guard.close()


async def test_fail_open_admits_locally_and_reconciles(
    own_redis: subprocess.Popen[bytes],
) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"  # type: ignore[attr-defined]
    inner = from_url(url, socket_timeout=0.3, connect_timeout=0.3)
    guard = GuardedStore(inner, "fail_open", probe_interval=0.2, open_share=1.0)
    assert await guard.reserve("before", DAY, lease=600, now=T0) is None  # in Redis
    await guard.settle("before", {"tokens": 70}, now=T0)
    assert await guard.reserve("in-flight", DAY, lease=600, now=T0) is None  # in Redis

    os.kill(own_redis.pid, signal.SIGSTOP)  # Redis stops answering: timeouts
    try:
        assert await guard.reserve("o1", DAY, lease=600, now=T0 + 1) is None
        assert guard.degraded
        assert await guard.reserve("o2", DAY, lease=600, now=T0 + 1) is None
        await guard.settle("o1", {"tokens": 40}, now=T0 + 2)
        await guard.release("o2", now=T0 + 2)
        await guard.settle("in-flight", {"tokens": 30}, now=T0 + 2)  # queued
        local = await guard.usage("user:u1:tokens:day", limit=1000, window=Window.DAY,
                                  now=T0 + 2)
        assert (local.used, local.reserved) == (40, 0)  # counted locally
        assert await guard.reserve("o3", DAY, lease=600, now=T0 + 3) is None
        assert guard.pending == 3  # o1's reserve given back, in-flight's settle, …
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)

    async def back() -> LimitUsage | None:  # the next probe finds Redis again
        found = await guard.usage("user:u1:tokens:day", limit=1000, window=Window.DAY,
                                  now=T0 + 4)
        return None if guard.degraded else found

    shared = await eventually_async(back)
    assert not guard.degraded and guard.pending == 0
    # Reconciled: 70 before + 40 settled locally + 30 of the queued settle.
    assert shared.used == 140
    await guard.settle("o3", {"tokens": 25}, now=T0 + 5)  # local hold, settled after
    direct = from_url(url)
    usage = await direct.usage("user:u1:tokens:day", limit=1000, window=Window.DAY,
                               now=T0 + 1000)  # past every lease: nothing stale held
    assert (usage.used, usage.reserved) == (165, 0)
    assert await guard.reconcile() and guard.pending == 0
    await direct.close()
    await guard.close()


async def test_extend_during_an_outage(own_redis: subprocess.Popen[bytes]) -> None:
    """fail_closed refuses to grow a shared hold; fail_open holds the growth locally
    (`#grow`, released at settle) and extends local reservations locally."""
    url = f"redis://127.0.0.1:{own_redis.port}/0"  # type: ignore[attr-defined]
    key = "user:u1:tokens:day"
    closed = GuardedStore(from_url(url, socket_timeout=0.3, connect_timeout=0.3),
                          "fail_closed", probe_interval=0.2)
    opened = GuardedStore(from_url(url, socket_timeout=0.3, connect_timeout=0.3),
                          "fail_open", probe_interval=0.2, open_share=0.6)
    assert await closed.reserve("c1", DAY, lease=600, now=T0) is None
    assert await opened.reserve("s1", DAY, lease=600, now=T0) is None
    assert await opened.extend("s1", {"tokens": 50}, lease=600, now=T0) is None  # shared
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable):
            await closed.extend("c1", {"tokens": 10}, lease=600, now=T0 + 1)
        assert await opened.extend("s1", {"tokens": 300}, lease=600, now=T0 + 1) is None
        assert await opened.extend("s1", {"tokens": 200}, lease=600, now=T0 + 1) is None
        local = await opened.usage(key, limit=1000, window=Window.DAY, now=T0 + 1)
        assert (local.used, local.reserved) == (0, 500)  # the growth, held here
        denial = await opened.extend("s1", {"tokens": 101}, lease=600, now=T0 + 1)
        assert denial is not None and denial.limit == 600  # this replica's share refuses
        assert await opened.reserve("o1", DAY, lease=600, now=T0 + 1) is None  # local
        assert await opened.extend("o1", {"tokens": 1}, lease=600, now=T0 + 1) is not None
        assert await opened.extend("nobody", {"tokens": 1}, lease=600, now=T0 + 1) == \
            NotHeld("nobody", "unknown")
        await opened.settle("s1", {"tokens": 600}, now=T0 + 2)  # queued; #grow released
        assert await opened.extend("o1", {"tokens": 400}, lease=600, now=T0 + 2) is None
        local = await opened.usage(key, limit=1000, window=Window.DAY, now=T0 + 2)
        assert (local.used, local.reserved) == (0, 500)  # o1's 100 + 400 only
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    async def back() -> LimitUsage | None:
        found = await opened.usage(key, limit=1000, window=Window.DAY, now=T0 + 3)
        return None if opened.degraded else found

    shared = await eventually_async(back)
    assert not opened.degraded and opened.pending == 0
    # s1 settled; c1 still held, and grown: the extension that timed out had reached
    # the paused server's socket and ran once it woke (a lost answer over-holds, until
    # the settle, and never overspends).
    assert (shared.used, shared.reserved) == (600, 110)
    await opened.settle("o1", {"tokens": 450}, now=T0 + 4)
    await closed.release("c1", now=T0 + 4)
    shared = await opened.usage(key, limit=1000, window=Window.DAY, now=T0 + 4)
    assert (shared.used, shared.reserved) == (1050, 0)
    await closed.close()
    await opened.close()


class Flaky(MemoryStore):
    """A shared store that can be cut off (`down`) and whose settles can be held at a
    gate, to replay the interleavings of an outage exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.gate: asyncio.Event | None = None

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("cut off")

    async def reserve(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._check()
        return await super().reserve(*args, **kwargs)

    async def settle(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._check()
        gate = self.gate
        if gate is not None:
            await gate.wait()
            self._check()
        return await super().settle(*args, **kwargs)

    async def release(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._check()
        return await super().release(*args, **kwargs)

    async def usage(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._check()
        return await super().usage(*args, **kwargs)


async def test_a_success_older_than_a_failure_does_not_lose_the_queued_settles() -> None:
    """A settle that began before the outage and succeeded after it once cleared the
    "down" mark: the settles queued meanwhile were never replayed (29-87 tokens short)."""
    shared = Flaky()
    guard = GuardedStore(shared, "fail_closed", probe_interval=0.0)
    for rid in ("a", "b"):
        assert await guard.reserve(rid, DAY, lease=600, now=T0) is None
    shared.gate = asyncio.Event()
    slow = asyncio.ensure_future(guard.settle("a", {"tokens": 30}, now=T0))
    await asyncio.sleep(0)
    shared.down = True
    await guard.settle("b", {"tokens": 45}, now=T0)  # fails: queued
    assert guard.pending == 1 and guard.degraded
    shared.down = False
    shared.gate.set()
    shared.gate = None
    await slow  # the older call succeeds now: it must not end the outage by itself
    await guard.usage("user:u1:tokens:day", limit=1000, window=Window.DAY, now=T0)
    assert guard.pending == 0 and not guard.degraded
    truth = await MemoryStore.usage(shared, "user:u1:tokens:day", limit=1000,
                                    window=Window.DAY, now=T0)
    assert (truth.used, truth.reserved) == (75, 0)  # 0 tokens short


async def test_fail_open_admits_at_most_each_replicas_share() -> None:
    """Two replicas during an outage: each admits at most open_share × limit, and no
    more than the room it last saw in the shared store."""
    limit, share = 1000, 0.25
    holds = [Hold("user:u1:tokens:day", 50, limit, Window.DAY)]
    shared = Flaky()
    replicas = [GuardedStore(shared, "fail_open", open_share=share) for _ in range(2)]
    shared.down = True
    admitted = 0
    for guard in replicas:
        for i in range(40):
            if await guard.reserve(f"{id(guard)}-{i}", holds, lease=600, now=T0) is None:
                await guard.settle(f"{id(guard)}-{i}", {"tokens": 50}, now=T0)
                admitted += 50
    assert admitted <= 2 * share * limit  # the documented worst case: R × share × limit
    assert admitted == 500
    # A replica that saw the shared store at 900 before the outage admits only 100.
    shared.down = False
    seen = GuardedStore(shared, "fail_open", open_share=share)
    assert await seen.reserve("pre", [Hold("user:u2:tokens:day", 900, limit, Window.DAY)],
                              lease=600, now=T0) is None
    await seen.settle("pre", {"tokens": 900}, now=T0)
    await seen.usage("user:u2:tokens:day", limit=limit, window=Window.DAY, now=T0)
    shared.down = True
    got = 0
    for i in range(10):
        if await seen.reserve(f"o{i}", [Hold("user:u2:tokens:day", 50, limit, Window.DAY)],
                              lease=600, now=T0) is None:
            got += 50
    assert got == 100


async def test_redis_stopped_under_load_loses_no_settled_token(
    own_redis: subprocess.Popen[bytes],
) -> None:
    """fail_closed, 16 tasks reserving and settling while Redis stops answering and comes
    back twice: once everything settled, Redis holds exactly the tokens settled."""
    url = f"redis://127.0.0.1:{own_redis.port}/0"  # type: ignore[attr-defined]
    inner = from_url(url, socket_timeout=0.2, connect_timeout=0.2)
    guard = GuardedStore(inner, "fail_closed", probe_interval=0.05)
    holds = [Hold("user:load:tokens:day", 20, 10**9, Window.DAY)]
    truth = 0
    stop = asyncio.Event()

    async def worker(n: int) -> None:
        nonlocal truth
        i = 0
        while not stop.is_set():
            rid = f"w{n}-{i}"
            i += 1
            try:
                if await guard.reserve(rid, holds, lease=600, now=T0) is not None:
                    continue
            except StoreUnavailable:
                await asyncio.sleep(0.01)
                continue
            used = 1 + (i % 19)
            await guard.settle(rid, {"tokens": used}, now=T0)  # never raises
            truth += used

    tasks = [asyncio.ensure_future(worker(n)) for n in range(16)]
    for _ in range(2):
        await asyncio.sleep(0.4)
        os.kill(own_redis.pid, signal.SIGSTOP)
        await asyncio.sleep(0.4)
        os.kill(own_redis.pid, signal.SIGCONT)
    await asyncio.sleep(0.4)
    stop.set()
    await asyncio.gather(*tasks)
    for _ in range(100):
        if await guard.reconcile() and guard.pending == 0:
            break
        await asyncio.sleep(0.05)
    direct = from_url(url)
    got = await direct.usage("user:load:tokens:day", limit=10**9, window=Window.DAY,
                             now=T0)
    assert truth > 0 and (got.used, got.reserved) == (truth, 0)
    await direct.close()
    await guard.close()


async def test_two_fail_open_replicas_through_a_redis_killed_and_restarted(
        tmp_path: Path) -> None:
    """fail_open, two replicas of 8 tasks each pressing on one limit while Redis (with
    its append-only file) is SIGKILLed and started again on the same port: during the
    outage each replica admits at most its share of the limit; once Redis is back and
    the queued settles have drained, Redis holds exactly the tokens settled, nothing
    reserved, and the limit was overrun by no more than replicas × share × limit."""
    limit, share, replicas = 4000, 0.1, 2
    port, key = free_port(), "user:open:tokens:day"
    holds = [Hold(key, 20, limit, Window.DAY)]
    settings = ("--appendonly", "yes")
    truth = 0
    stop = asyncio.Event()

    async def worker(guard: GuardedStore, n: int) -> None:
        nonlocal truth
        i = 0
        while not stop.is_set():
            rid = f"{id(guard)}-{n}-{i}"
            i += 1
            try:
                denied = await guard.reserve(rid, holds, lease=600, now=T0)
            except StoreUnavailable:
                denied = True
            if denied is not None:
                await asyncio.sleep(0.005)
                continue
            used = 1 + (i % 19)
            await guard.settle(rid, {"tokens": used}, now=T0)  # never raises
            truth += used

    with redis_server(*settings, port=port, directory=str(tmp_path)) as first:
        url = first.url
        guards = [GuardedStore(from_url(url, socket_timeout=0.2, connect_timeout=0.2),
                               "fail_open", probe_interval=0.05, open_share=share)
                  for _ in range(replicas)]
        tasks = [asyncio.ensure_future(worker(g, n)) for g in guards for n in range(8)]
        await eventually_async(lambda: _at_least(url, key, limit - 100), timeout=20)
        os.kill(first.pid, signal.SIGKILL)  # the limit is nearly spent: now the outage
        await asyncio.sleep(0.5)
    with redis_server(*settings, port=port, directory=str(tmp_path)):
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        for guard in guards:
            await eventually_async(lambda g=guard: _drained(g), timeout=20)
        direct = from_url(url)
        got = await direct.usage(key, limit=limit, window=Window.DAY, now=T0)
        await direct.close()
        for guard in guards:
            await guard.close()
    assert (got.used, got.reserved) == (truth, 0)
    assert limit - 100 <= truth <= limit + replicas * share * limit


async def _at_least(url: str, key: str, tokens: int) -> bool:
    store = from_url(url)
    try:
        got = await store.usage(key, limit=10**9, window=Window.DAY, now=T0)
    finally:
        await store.close()
    return got.used >= tokens


async def _drained(guard: GuardedStore) -> bool:
    return await guard.reconcile() and guard.pending == 0
