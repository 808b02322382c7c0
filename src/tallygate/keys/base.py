"""Key stores: the `KeyStore` protocol and the checks every backend shares.

Every backend looks a key up by the SHA-256 of the presented secret and then compares the
stored hash with `hmac.compare_digest`, so the final check takes the same time whatever
the bytes (`BaseKeyStore.verify`). The SQL backends live in `tallygate.keys.sql`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from enum import Enum
from typing import Final, Literal, Protocol, runtime_checkable

from tallygate.errors import InvalidRequest
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


class _Unset(Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET  # "leave this field as it is" in KeyStore.update
Unset = Literal[_Unset.UNSET]


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

    async def update(
        self,
        key_id: str,
        *,
        plan: str | Unset = UNSET,
        name: str | Unset | None = UNSET,
        features: Sequence[str] | Unset = UNSET,
        models: Sequence[str] | Unset = UNSET,
        limits: Mapping[str, LimitValue] | Unset = UNSET,
    ) -> VirtualKey | None:
        """Change an active key's plan, name, allow-lists or own limits (fields left UNSET
        stay; an empty list allows everything again, `{}` drops the key's limits, name
        None clears it). The secret and the id stay. None when there is no such key;
        InvalidRequest when it is revoked or a value is malformed."""
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

    async def get(self, key_id: str) -> VirtualKey | None:
        raise NotImplementedError

    async def update(
        self,
        key_id: str,
        *,
        plan: str | Unset = UNSET,
        name: str | Unset | None = UNSET,
        features: Sequence[str] | Unset = UNSET,
        models: Sequence[str] | Unset = UNSET,
        limits: Mapping[str, LimitValue] | Unset = UNSET,
    ) -> VirtualKey | None:
        changes: dict[str, object] = {}
        if plan is not UNSET:
            changes["plan"] = str(check_text(plan, "plan"))
        if name is not UNSET:
            changes["name"] = check_text(name, "name", optional=True)
        if features is not UNSET:
            changes["features"] = check_names(features, "features")
        if models is not UNSET:
            changes["models"] = check_names(models, "models")
        if limits is not UNSET:
            changes["limits"] = check_limits(limits)
        key = await self.get(key_id)
        if key is None:
            return None
        if not key.active:
            raise InvalidRequest(f"Key {key_id[:64]!r} is revoked: create a new one.",
                                 param="id")
        updated = replace(key, **changes)  # type: ignore[arg-type]
        if not await self._replace(updated):  # revoked meanwhile
            raise InvalidRequest(f"Key {key_id[:64]!r} is revoked: create a new one.",
                                 param="id")
        return updated

    async def _replace(self, key: VirtualKey) -> bool:
        """Store `key`'s plan, name, allow-lists and limits if it is still active."""
        raise NotImplementedError

    async def _insert(self, key: VirtualKey, digest: str) -> None:
        raise NotImplementedError

    async def _find_by_hash(self, digest: str) -> tuple[VirtualKey, str] | None:
        raise NotImplementedError

    async def _mark_revoked(self, key_id: str, now: int) -> bool:
        raise NotImplementedError


