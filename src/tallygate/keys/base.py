"""Key stores: the `KeyStore` protocol, the in-memory store, and `open_keystore(url)`.

Every backend looks a key up by the SHA-256 of the presented secret and then compares the
stored hash with `hmac.compare_digest`, so the final check takes the same time whatever
the bytes (`BaseKeyStore.verify`). The SQL backends live in `tallygate.keys.sql`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from tallygate.keys.model import (
    LimitValue,
    VirtualKey,
    check_limits,
    check_names,
    check_text,
    hash_secret,
    new_key_id,
    new_secret,
    plausible_secret,
)

Clock = Callable[[], float]


@runtime_checkable
class KeyStore(Protocol):
    """Where virtual keys live. All methods are coroutines."""

    async def create(
        self,
        user: str,
        plan: str,
        *,
        name: str | None = None,
        features: Sequence[str] = (),
        models: Sequence[str] = (),
        limits: Mapping[str, LimitValue] | None = None,
    ) -> tuple[VirtualKey, str]:
        """A new key and its secret. The secret is not kept: show it once."""
        ...

    async def verify(self, secret: str) -> VirtualKey | None:
        """The active key for this secret, or None (unknown, revoked, malformed)."""
        ...

    async def get(self, key_id: str) -> VirtualKey | None: ...

    async def list(self, include_revoked: bool = False) -> list[VirtualKey]:
        """Keys, oldest first."""
        ...

    async def revoke(self, key_id: str) -> bool:
        """Revoke; True when the key exists (revoking twice keeps the first time)."""
        ...

    async def close(self) -> None: ...


class BaseKeyStore:
    """Shared create/verify logic; a backend supplies the four storage primitives."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock

    async def create(
        self,
        user: str,
        plan: str,
        *,
        name: str | None = None,
        features: Sequence[str] = (),
        models: Sequence[str] = (),
        limits: Mapping[str, LimitValue] | None = None,
    ) -> tuple[VirtualKey, str]:
        key = VirtualKey(
            id=new_key_id(),
            user=str(check_text(user, "user")),
            plan=str(check_text(plan, "plan")),
            name=check_text(name, "name", optional=True),
            features=check_names(features, "features"),
            models=check_names(models, "models"),
            limits=check_limits(limits),
            created_at=int(self._clock()),
        )
        secret = new_secret()
        await self._insert(key, hash_secret(secret))
        return key, secret

    async def verify(self, secret: str) -> VirtualKey | None:
        if not isinstance(secret, str) or not plausible_secret(secret):
            return None
        digest = hash_secret(secret)
        found = await self._find_by_hash(digest)
        if found is None:
            return None
        key, stored = found
        # Constant-time: the lookup used an index, the final word is compare_digest's.
        if not hmac.compare_digest(stored.encode("ascii"), digest.encode("ascii")):
            return None
        return key if key.active else None

    async def revoke(self, key_id: str) -> bool:
        return await self._mark_revoked(key_id, int(self._clock()))

    async def _insert(self, key: VirtualKey, digest: str) -> None:
        raise NotImplementedError

    async def _find_by_hash(self, digest: str) -> tuple[VirtualKey, str] | None:
        raise NotImplementedError

    async def _mark_revoked(self, key_id: str, now: int) -> bool:
        raise NotImplementedError


