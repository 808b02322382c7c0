"""`CachedKeyStore`: a short-lived in-process cache in front of any KeyStore.

Verified keys are cached for at most `ttl` seconds (1 s by default), so a revocation made
on any gateway is seen by every gateway within ~ttl. Misses (unknown or revoked secrets)
are cached for `negative_ttl` too, so a flood of bad keys costs one lookup per secret
per second, not one per request; concurrent lookups of one secret share one query.
Entries are keyed by the SHA-256 of the secret: the raw secret is not kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tallygate.keys.base import KeyStore
from tallygate.keys.model import VirtualKey, hash_secret, plausible_secret

Clock = Callable[[], float]


class _Bounded:
    """digest → (expires_at, key or None); oldest entries dropped past `cap`."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._items: dict[str, tuple[float, VirtualKey | None]] = {}

    def get(self, digest: str, now: float) -> tuple[bool, VirtualKey | None]:
        hit = self._items.get(digest)
        if hit is None:
            return False, None
        if hit[0] <= now:
            del self._items[digest]
            return False, None
        return True, hit[1]

    def put(self, digest: str, value: VirtualKey | None, expires_at: float) -> None:
        self._items.pop(digest, None)
        while len(self._items) >= self._cap:
            del self._items[next(iter(self._items))]
        self._items[digest] = (expires_at, value)

    def drop_key(self, key_id: str) -> None:
        stale = [d for d, (_, k) in self._items.items() if k is not None and k.id == key_id]
        for digest in stale:
            del self._items[digest]

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class CachedKeyStore:
    """A KeyStore whose `verify` is cached; every other call goes straight through."""

    def __init__(
        self,
        inner: KeyStore,
        ttl: float = 1.0,
        *,
        negative_ttl: float | None = None,
        clock: Clock = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self.inner = inner
        self._ttl = ttl
        self._negative_ttl = ttl if negative_ttl is None else negative_ttl
        self._clock = clock
        self._good = _Bounded(max_entries)
        self._bad = _Bounded(max_entries)  # separate, so a flood cannot evict good keys
        self._pending: dict[str, asyncio.Task[VirtualKey | None]] = {}

    async def verify(self, secret: str) -> VirtualKey | None:
        if not isinstance(secret, str) or not plausible_secret(secret):
            return None
        digest = hash_secret(secret)
        now = self._clock()
        for cache in (self._good, self._bad):
            found, key = cache.get(digest, now)
            if found:
                return key
        task = self._pending.get(digest)
        if task is None:
            # A task, not a bare await: a cancelled caller must not cancel the lookup
            # that other callers of the same secret are waiting on.
            task = asyncio.ensure_future(self._fill(secret, digest))
            self._pending[digest] = task
            task.add_done_callback(lambda done: self._lookup_done(digest, done))
        return await asyncio.shield(task)

    async def _fill(self, secret: str, digest: str) -> VirtualKey | None:
        key = await self.inner.verify(secret)
        now = self._clock()
        if key is None:
            self._bad.put(digest, None, now + self._negative_ttl)
        else:
            self._good.put(digest, key, now + self._ttl)
        return key

    def _lookup_done(self, digest: str, task: asyncio.Task[VirtualKey | None]) -> None:
        if self._pending.get(digest) is task:
            del self._pending[digest]
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not logged

    async def create(self, user: str, plan: str, **fields: Any) -> tuple[VirtualKey, str]:
        """KeyStore.create, passed through (`fields` are its keyword arguments)."""
        return await self.inner.create(user, plan, **fields)

    async def get(self, key_id: str) -> VirtualKey | None:
        return await self.inner.get(key_id)

    async def list(self, include_revoked: bool = False) -> list[VirtualKey]:
        return await self.inner.list(include_revoked)

    async def revoke(self, key_id: str) -> bool:
        """Revoke; this process forgets the key at once, others within `ttl`."""
        ok = await self.inner.revoke(key_id)
        self._good.drop_key(key_id)
        return ok

    async def update(self, key_id: str, **changes: Any) -> VirtualKey | None:
        """KeyStore.update (`changes` are its keyword arguments); this process sees the
        change at once, others within `ttl`."""
        key = await self.inner.update(key_id, **changes)
        self._good.drop_key(key_id)
        return key

    async def rotate(self, key_id: str) -> tuple[VirtualKey, str] | None:
        """KeyStore.rotate; this process refuses the old secret at once, others within
        `ttl`."""
        rotated = await self.inner.rotate(key_id)
        self._good.drop_key(key_id)
        return rotated

    def invalidate(self) -> None:
        """Forget everything cached (e.g. after an out-of-band change)."""
        self._good.clear()
        self._bad.clear()

    async def close(self) -> None:
        await self.inner.close()
