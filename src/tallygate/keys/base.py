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
from typing import Any, Final, Literal, Protocol, runtime_checkable

from tallygate.config.names import did_you_mean
from tallygate.errors import InvalidRequest
from tallygate.keys.model import (
    LimitValue,
    VirtualKey,
    check_expires_at,
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
        expires_at: int | None = None,
    ) -> tuple[VirtualKey, str]:
        """A new key and its secret. The secret is not kept: show it once. `expires_at`
        (unix seconds, in the future) ends it by itself: the gateway answers 401
        `key_expired` from then on."""
        ...

    async def verify(self, secret: str) -> VirtualKey | None:
        """The active key for this secret, or None (unknown, revoked, malformed). An
        expired key is returned: its caller says `key_expired` (VirtualKey.expired)."""
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
        expires_at: int | Unset | None = UNSET,
    ) -> VirtualKey | None:
        """Change an active key's plan, name, allow-lists, own limits or expiry (fields
        left UNSET stay; an empty list allows everything again, `{}` drops the key's
        limits, name None clears it, expires_at None makes it last). The secret and the
        id stay. None when there is no such key; InvalidRequest when it is revoked or a
        value is malformed."""
        ...

    async def rotate(self, key_id: str) -> tuple[VirtualKey, str] | None:
        """A new secret for an active key, the old one refused from now on (within the
        cache's second on other gateways). Same id, settings and counters. None when
        there is no such key; InvalidRequest when it is revoked."""
        ...

    async def close(self) -> None: ...


# The fields create() and update() take besides the user, in the order they are checked,
# each with its check (InvalidRequest naming the field when malformed).
_FIELD_CHECKS: dict[str, Callable[[Any], object]] = {
    "plan": lambda value: str(check_text(value, "plan")),
    "name": lambda value: check_text(value, "name", optional=True),
    "features": lambda value: check_names(value, "features"),
    "models": lambda value: check_names(value, "models"),
    "limits": check_limits,
    "expires_at": check_expires_at,
}


def checked_fields(method: str, given: Mapping[str, Any]) -> dict[str, object]:
    """The `given` key fields checked, the UNSET ones left out. A name that is not a field
    is a TypeError, as Python raises for an unknown keyword argument, with a suggestion."""
    for name in given:
        if name not in _FIELD_CHECKS:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}"
                            f"{did_you_mean(name, _FIELD_CHECKS)}")
    return {name: check(given[name]) for name, check in _FIELD_CHECKS.items()
            if name in given and given[name] is not UNSET}


class BaseKeyStore:
    """Shared create/verify/update logic (the signatures are KeyStore's); a backend
    supplies the storage primitives."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock

    async def create(self, user: str, plan: str, **fields: Any) -> tuple[VirtualKey, str]:
        given = {"plan": plan, "name": None, "features": (), "models": (), "limits": None,
                 **fields}
        user = str(check_text(user, "user"))
        checked = checked_fields("create", given)
        now = self._clock()
        self._check_future(checked, now)
        key = VirtualKey(id=new_key_id(), user=user, created_at=int(now),
                         **checked)  # type: ignore[arg-type]
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

    async def update(self, key_id: str, **changes: Any) -> VirtualKey | None:
        checked = checked_fields("update", changes)
        self._check_future(checked, self._clock())
        key = await self.get(key_id)
        if key is None:
            return None
        if not key.active:
            raise InvalidRequest(f"Key {key_id[:64]!r} is revoked: create a new one.",
                                 param="id")
        updated = replace(key, **checked)  # type: ignore[arg-type]
        if not await self._replace(updated):  # revoked meanwhile
            raise InvalidRequest(f"Key {key_id[:64]!r} is revoked: create a new one.",
                                 param="id")
        return updated

    async def rotate(self, key_id: str) -> tuple[VirtualKey, str] | None:
        key = await self.get(key_id)
        if key is None:
            return None
        secret = new_secret()
        if not key.active or not await self._rehash(key_id, hash_secret(secret)):
            raise InvalidRequest(f"Key {key_id[:64]!r} is revoked: create a new one.",
                                 param="id")
        return key, secret

    @staticmethod
    def _check_future(checked: Mapping[str, object], now: float) -> None:
        expires = checked.get("expires_at")
        if isinstance(expires, int) and expires <= now:
            raise InvalidRequest(f"expires_at {expires} is not in the future (revoke a key to "
                                 "end it now).", param="expires_at")

    async def _replace(self, key: VirtualKey) -> bool:
        """Store `key`'s plan, name, allow-lists, limits and expiry if it is still active."""
        raise NotImplementedError

    async def _rehash(self, key_id: str, digest: str) -> bool:
        """Replace the stored hash of an active key; False when revoked or gone."""
        raise NotImplementedError

    async def _insert(self, key: VirtualKey, digest: str) -> None:
        raise NotImplementedError

    async def _find_by_hash(self, digest: str) -> tuple[VirtualKey, str] | None:
        raise NotImplementedError

    async def _mark_revoked(self, key_id: str, now: int) -> bool:
        raise NotImplementedError


