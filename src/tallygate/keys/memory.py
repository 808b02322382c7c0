"""Keys in process memory: tests and `memory://` ledgers."""

from __future__ import annotations

import time
from dataclasses import replace

from tallygate.keys.base import BaseKeyStore, Clock
from tallygate.keys.model import (
    VirtualKey,
)


class MemoryKeyStore(BaseKeyStore):
    """Process-local keys (tests, demos). Same behaviour as the SQL stores."""

    def __init__(self, clock: Clock = time.time) -> None:
        super().__init__(clock)
        self._keys: dict[str, VirtualKey] = {}
        self._hashes: dict[str, str] = {}  # hash → id

    async def _insert(self, key: VirtualKey, digest: str) -> None:
        self._keys[key.id] = key
        self._hashes[digest] = key.id

    async def _find_by_hash(self, digest: str) -> tuple[VirtualKey, str] | None:
        key_id = self._hashes.get(digest)
        if key_id is None:
            return None
        return self._keys[key_id], digest

    async def _mark_revoked(self, key_id: str, now: int) -> bool:
        key = self._keys.get(key_id)
        if key is None:
            return False
        if key.active:
            self._keys[key_id] = replace(key, revoked_at=now)
        return True

    async def _replace(self, key: VirtualKey) -> bool:
        current = self._keys.get(key.id)
        if current is None or not current.active:
            return False
        self._keys[key.id] = key
        return True

    async def _rehash(self, key_id: str, digest: str) -> bool:
        current = self._keys.get(key_id)
        if current is None or not current.active:
            return False
        self._hashes = {h: k for h, k in self._hashes.items() if k != key_id}
        self._hashes[digest] = key_id
        return True

    async def get(self, key_id: str) -> VirtualKey | None:
        return self._keys.get(key_id)

    async def list(self, include_revoked: bool = False) -> list[VirtualKey]:
        keys = sorted(self._keys.values(), key=lambda k: (k.created_at, k.id))
        return [k for k in keys if include_revoked or k.active]

    async def close(self) -> None:
        return None
