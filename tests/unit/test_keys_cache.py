"""CachedKeyStore: revocation seen within ttl, negative caching, shared lookups.
The inner store is a real MemoryKeyStore wrapped to count its verify calls."""

from __future__ import annotations

import asyncio

import pytest

from tallygate.keys import CachedKeyStore, MemoryKeyStore, VirtualKey


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(MemoryKeyStore):
    """A real memory store that counts lookups and can be held until `gate` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.gate: asyncio.Event | None = None

    async def verify(self, secret: str) -> VirtualKey | None:
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        return await super().verify(secret)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inner() -> CountingStore:
    return CountingStore()


@pytest.fixture
def cached(inner: CountingStore, clock: Clock) -> CachedKeyStore:
    return CachedKeyStore(inner, ttl=1.0, clock=clock)


async def test_positive_hits_are_cached(cached: CachedKeyStore, inner: CountingStore) -> None:
    key, secret = await cached.create("u", "pro")
    for _ in range(50):
        assert await cached.verify(secret) == key
    assert inner.lookups == 1


async def test_revocation_elsewhere_seen_after_ttl(
    cached: CachedKeyStore, inner: CountingStore, clock: Clock
) -> None:
    key, secret = await cached.create("u", "pro")
    assert await cached.verify(secret) == key
    await inner.revoke(key.id)  # another gateway revoked it in the shared store
    clock.now += 0.5
    assert await cached.verify(secret) == key  # still within the 1 s window
    clock.now += 0.5
    assert await cached.verify(secret) is None  # ttl passed: refused
    assert inner.lookups == 2


async def test_revocation_through_the_cache_is_immediate(
    cached: CachedKeyStore, clock: Clock
) -> None:
    key, secret = await cached.create("u", "pro")
    assert await cached.verify(secret) == key
    assert await cached.revoke(key.id) is True
    assert await cached.verify(secret) is None


async def test_negative_results_are_cached(
    cached: CachedKeyStore, inner: CountingStore, clock: Clock
) -> None:
    bad = "tg-" + "z" * 40
    for _ in range(100):
        assert await cached.verify(bad) is None
    assert inner.lookups == 1
    clock.now += 1.01
    assert await cached.verify(bad) is None
    assert inner.lookups == 2


async def test_malformed_secrets_never_reach_the_store(
    cached: CachedKeyStore, inner: CountingStore
) -> None:
    for bad in ("", "sk-abc", "tg-" + "a" * 1000):
        assert await cached.verify(bad) is None
    assert inner.lookups == 0


async def test_flood_of_bad_keys_does_not_evict_good_ones(
    inner: CountingStore, clock: Clock
) -> None:
    cached = CachedKeyStore(inner, ttl=1.0, clock=clock, max_entries=10)
    key, secret = await cached.create("u", "pro")
    assert await cached.verify(secret) == key
    for i in range(100):
        assert await cached.verify(f"tg-bad{i:040d}") is None
    lookups = inner.lookups
    assert await cached.verify(secret) == key
    assert inner.lookups == lookups


async def test_concurrent_lookups_share_one_query(
    cached: CachedKeyStore, inner: CountingStore
) -> None:
    key, secret = await cached.create("u", "pro")
    inner.gate = asyncio.Event()
    lookups = [asyncio.create_task(cached.verify(secret)) for _ in range(20)]
    await asyncio.sleep(0)  # every task is waiting now
    inner.gate.set()
    results = await asyncio.gather(*lookups)
    assert results == [key] * 20
    assert inner.lookups == 1


async def test_cancelled_caller_does_not_break_others(
    cached: CachedKeyStore, inner: CountingStore
) -> None:
    key, secret = await cached.create("u", "pro")
    inner.gate = asyncio.Event()
    first = asyncio.create_task(cached.verify(secret))
    await asyncio.sleep(0)
    second = asyncio.create_task(cached.verify(secret))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    inner.gate.set()
    assert await second == key
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_store_errors_propagate_and_are_not_cached(
    cached: CachedKeyStore, inner: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, secret = await cached.create("u", "pro")

    async def broken(secret: str) -> VirtualKey | None:
        raise OSError("database gone")

    monkeypatch.setattr(inner, "verify", broken)
    with pytest.raises(OSError):
        await cached.verify(secret)
    monkeypatch.undo()
    assert await cached.verify(secret) == key


async def test_a_mistyped_field_is_a_type_error_with_a_suggestion(
        cached: CachedKeyStore) -> None:
    with pytest.raises(TypeError, match=r"create\(\).*'modles' \(did you mean 'models'\?\)"):
        await cached.create("u", "free", modles=["gpt-4o"])
    key, _ = await cached.create("u", "free", models=["gpt-4o"])
    with pytest.raises(TypeError, match=r"update\(\).*'plna' \(did you mean 'plan'\?\)"):
        await cached.update(key.id, plna="pro")
    assert (await cached.get(key.id)) == key  # nothing was changed
