"""Failed key checks per client address: past `server.auth_failures_per_minute` in a
minute, that address's key checks are refused with 429 (`auth_throttled`) until the
minute ends, and one log line says so. A guess then costs the guesser a minute, not
a hash lookup.

The address is the TCP peer (`scope["client"]`; no X-Forwarded-For is trusted). The
gateway sets it in a context variable per request, and `ThrottledKeys` wraps the key
store the proxy and the operational routes verify keys with, so the proxy needs no
change. Memory is bounded: at most MAX_ADDRESSES addresses are tracked."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any

from tallygate.errors import RateLimited
from tallygate.keys.base import KeyStore
from tallygate.keys.model import VirtualKey

log = logging.getLogger("tallygate.auth")
CLIENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("tallygate_client",
                                                                   default=None)
WINDOW = 60.0
MAX_ADDRESSES = 10_000


class AuthThrottled(RateLimited):
    """Too many failed key checks from one address."""

    code = "auth_throttled"


class AuthThrottle:
    """Fixed one-minute windows of failed checks per address."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._wall = wall
        self._seen: dict[str, list[float]] = {}  # address → [window start, failures]

    def check(self, address: str) -> None:
        """AuthThrottled while the address is over its failures this minute."""
        entry = self._seen.get(address)
        if entry is None or entry[1] <= self.per_minute:
            return
        left = entry[0] + WINDOW - self._clock()
        if left <= 0:
            del self._seen[address]
            return
        raise AuthThrottled(
            f"Too many failed API key checks from this address: retry in {int(left) + 1} s.",
            retry_after=int(left) + 1, should_retry=False, reset_at=self._wall() + left)

    def failed(self, address: str) -> None:
        now = self._clock()
        entry = self._seen.get(address)
        if entry is None or now - entry[0] >= WINDOW:
            if entry is None and len(self._seen) >= MAX_ADDRESSES:
                self._forget_oldest(now)
            self._seen[address] = entry = [now, 0]
        entry[1] += 1
        if entry[1] == self.per_minute + 1:
            log.warning("auth: %d failed key checks from %s within a minute; refusing its "
                        "key checks until the minute ends", self.per_minute + 1, address)

    def _forget_oldest(self, now: float) -> None:
        stale = [a for a, (start, _) in self._seen.items() if now - start >= WINDOW]
        for address in stale or [next(iter(self._seen))]:
            del self._seen[address]


class ThrottledKeys:
    """A KeyStore whose `verify` counts failures per client address (see module)."""

    def __init__(self, inner: KeyStore, throttle: AuthThrottle) -> None:
        self.inner = inner
        self.throttle = throttle

    async def verify(self, secret: str) -> VirtualKey | None:
        address = CLIENT.get()
        if address is None:
            return await self.inner.verify(secret)
        self.throttle.check(address)
        key = await self.inner.verify(secret)
        if key is None:
            self.throttle.failed(address)
        return key

    async def create(self, user: str, plan: str, **fields: Any) -> tuple[VirtualKey, str]:
        """KeyStore.create, passed through (`fields` are its keyword arguments)."""
        return await self.inner.create(user, plan, **fields)

    async def update(self, key_id: str, **changes: Any) -> VirtualKey | None:
        return await self.inner.update(key_id, **changes)

    async def rotate(self, key_id: str) -> tuple[VirtualKey, str] | None:
        return await self.inner.rotate(key_id)

    async def get(self, key_id: str) -> VirtualKey | None:
        return await self.inner.get(key_id)

    async def list(self, include_revoked: bool = False) -> list[VirtualKey]:
        return await self.inner.list(include_revoked)

    async def revoke(self, key_id: str) -> bool:
        return await self.inner.revoke(key_id)

    async def close(self) -> None:
        await self.inner.close()
