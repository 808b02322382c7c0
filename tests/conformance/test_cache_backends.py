"""The signed cache over every backend (memory, sqlite file, real redis, a directory):
round trip, TTL, tampered, foreign and moved entries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tallygate.cache.backends import CacheBackend, open_backend
from tallygate.cache.signed import ResponseCache
from tests.support.waiting import eventually_async

KEY = b"k" * 32


@pytest.fixture(params=["memory", "sqlite", "redis", "directory"])
async def backend(request, tmp_path) -> AsyncIterator[CacheBackend]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/cache.db"
    elif request.param == "directory":
        url = f"file://{tmp_path}/cache"
    else:
        url = request.getfixturevalue("redis_url")
    made = open_backend(url)
    yield made
    await made.close()


async def test_round_trip_and_ttl(backend: CacheBackend) -> None:
    now = [100.0]
    cache = ResponseCache(backend, KEY, ttl=10, clock=lambda: now[0])
    await cache.put("a" * 64, '{"x": 1}')
    assert await cache.get("a" * 64) == '{"x": 1}'
    assert await cache.get("b" * 64) is None
    now[0] += 10.5
    assert await cache.get("a" * 64) is None


async def test_tampered_and_foreign_entries_are_misses(backend: CacheBackend) -> None:
    cache = ResponseCache(backend, KEY, ttl=60)
    await cache.put("c" * 64, "genuine")
    raw = await backend.get("c" * 64)
    assert raw is not None
    await backend.set("c" * 64, raw.replace(b"genuine", b"forged!"), 60)
    assert await cache.get("c" * 64) is None
    await backend.set("d" * 64, raw, 60)  # a genuine entry moved under another key
    assert await cache.get("d" * 64) is None
    other = ResponseCache(backend, b"another-key-entirely", ttl=60)
    await other.put("e" * 64, "foreign")
    assert await cache.get("e" * 64) is None
    assert cache.tampered == 3


async def test_redis_expires_entries_itself(redis_url: str) -> None:
    backend = open_backend(redis_url)
    try:
        await backend.set("short", b"v", 0.05)
        assert await backend.get("short") == b"v"
        async def gone() -> bool:
            return await backend.get("short") is None

        assert await eventually_async(gone, timeout=2.0)  # by Redis's own clock
    finally:
        await backend.close()


async def test_sqlite_hits_never_wait_for_a_writer_and_expired_rows_are_purged(
        tmp_path) -> None:
    import sqlite3

    from tallygate.cache.backends import PURGE_EVERY

    path = tmp_path / "cache.db"
    backend = open_backend(f"sqlite:///{path}")
    try:
        await backend.set("hit", b"v1", 60)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        other.execute("UPDATE tg_cache SET value = x'00' WHERE key = 'hit'")
        assert await asyncio.wait_for(backend.get("hit"), 1) == b"v1"  # the committed one
        other.execute("ROLLBACK")
        other.close()
        await backend.set("old", b"x", -1)  # already expired: a miss, then purged
        assert await backend.get("old") is None
        for i in range(PURGE_EVERY):
            await backend.set(f"k{i}", b"v", 60)
        db = sqlite3.connect(path)
        keys = {k for (k,) in db.execute("SELECT key FROM tg_cache")}
        db.close()
        assert "old" not in keys and "hit" in keys
    finally:
        await backend.close()


async def test_directory_backend_keeps_hostile_keys_inside_and_skips_huge_files(
        tmp_path) -> None:
    from tallygate.cache.directory import DirectoryBackend

    root = tmp_path / "cache"
    backend = DirectoryBackend(root, max_bytes=128)
    for key in ("../../escape", "/etc/passwd", "a/b\\c:d", "gen:" + "f" * 64):
        await backend.set(key, b"v:" + key.encode(), 60)
        assert await backend.get(key) == b"v:" + key.encode()
        assert backend.path_of(key).resolve().is_relative_to(root.resolve())
    assert not (tmp_path / "escape").exists()
    assert await backend.get("a/b/c:d") is None  # made-safe names do not collide
    big = backend.path_of("big")
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(b"x" * 129)
    assert await backend.get("big") is None
    assert not [p for p in root.rglob(".tmp-*")]  # writes leave no temporary files
    with pytest.raises(Exception, match="file:///ABSOLUTE/DIR"):
        open_backend("file://relative/dir")
