"""Signed, expiring cache entries over any backend.

An entry is `hex(HMAC-SHA256(hmac_key, payload)) + "." + payload`, where the payload is
JSON `{"k": cache key, "exp": unix expiry, "v": value}`. The key is inside the signed
payload, so an entry copied under another key, written with another hmac key, or edited
in the backend fails the check: it is a miss, and logged."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable

import orjson

from tallygate.cache.backends import CacheBackend

log = logging.getLogger("tallygate.cache")


class ResponseCache:
    def __init__(
        self,
        backend: CacheBackend,
        hmac_key: bytes,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not hmac_key:
            raise ValueError("a cache needs an hmac key")
        self.backend = backend
        self.ttl = ttl
        self.clock = clock
        self._key = hmac_key
        self.tampered = 0  # entries refused by the signature check (for tests and metrics)

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest().encode()

    async def put(self, key: str, value: str, ttl: float | None = None) -> None:
        """Store `value` (text: an upstream JSON body, a summary) for `ttl` seconds."""
        seconds = self.ttl if ttl is None else ttl
        payload = orjson.dumps({"k": key, "exp": self.clock() + seconds, "v": value})
        await self.backend.set(key, self._sign(payload) + b"." + payload, seconds)

    async def get(self, key: str) -> str | None:
        """The value, or None when absent, expired, or failing the signature check."""
        raw = await self.backend.get(key)
        if raw is None:
            return None
        entry, problem = self._open(key, raw)
        if entry is None:
            self.tampered += 1
            log.warning("cache entry %s… ignored: %s (tampered or foreign)", key[:16], problem)
            return None
        expires, value = entry
        return value if expires > self.clock() else None

    def _open(self, key: str, raw: bytes) -> tuple[tuple[float, str] | None, str]:
        """((expiry, value), "") for a genuine entry of `key`, else (None, why not)."""
        sig, dot, payload = raw.partition(b".")
        if not dot or not hmac.compare_digest(sig, self._sign(payload)):
            return None, "bad signature"
        try:
            entry = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None, "unreadable payload"
        if not isinstance(entry, dict) or entry.get("k") != key:
            return None, "entry belongs to another key"
        expires, value = entry.get("exp"), entry.get("v")
        if not isinstance(expires, int | float) or not isinstance(value, str):
            return None, "malformed entry"
        return (float(expires), value), ""

    async def close(self) -> None:
        await self.backend.close()
