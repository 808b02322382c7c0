"""The virtual key value object, secret generation/hashing and limit-mapping checks.

Secrets are `tg-` + 40 urlsafe characters (30 random bytes = 240 bits). We store only
SHA-256(secret): a slow password hash (bcrypt, argon2) protects low-entropy passwords
against offline guessing, but guessing a 240-bit random secret is hopeless either way,
so a fast hash is right and keeps verification cheap on every request.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tallygate.errors import InvalidRequest

SECRET_PREFIX = "tg-"
SECRET_RANDOM_BYTES = 30  # → 40 urlsafe base64 characters
MAX_SECRET_LENGTH = 256  # anything longer cannot be one of ours: skip the lookup
MAX_NAME_LENGTH = 256
MAX_LIST_ITEMS = 256

LimitValue = int | float
_WINDOWS = "minute|hour|day|month"
_COUNT_LIMIT = re.compile(rf"^(tokens|requests)_per_({_WINDOWS})$")
_COST_LIMIT = re.compile(rf"^cost_(usd_per_({_WINDOWS})|per_({_WINDOWS})_usd)$")
LIMIT_NAMES = tuple(f"{m}_per_{w}" for m in ("tokens", "requests", "cost_usd")
                    for w in _WINDOWS.split("|"))


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_RANDOM_BYTES)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of the secret (see the module docstring for why a fast hash)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def plausible_secret(secret: str) -> bool:
    """Cheap shape check so garbage never reaches the database."""
    return secret.startswith(SECRET_PREFIX) and 0 < len(secret) <= MAX_SECRET_LENGTH


def _pattern_allows(patterns: tuple[str, ...], value: str) -> bool:
    if not patterns:
        return True
    for pattern in patterns:
        if pattern == value or ("*" in pattern and fnmatch.fnmatchcase(value, pattern)):
            return True
    return False


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A key's public record. Never holds the secret nor its hash."""

    id: str
    user: str
    plan: str
    name: str | None = None
    features: tuple[str, ...] = ()  # allow-list; empty = every feature
    models: tuple[str, ...] = ()  # allow-list; empty = every model; `*` wildcards allowed
    limits: dict[str, LimitValue] = field(default_factory=dict, hash=False)
    created_at: int = 0  # unix seconds
    revoked_at: int | None = None
    expires_at: int | None = None  # unix seconds; None = never

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def expired(self, now: float) -> bool:
        """Past its expiry at `now` (a revoked key is refused whatever this says)."""
        return self.expires_at is not None and now >= self.expires_at

    def allows_feature(self, feature: str) -> bool:
        return _pattern_allows(self.features, feature)

    def allows_model(self, model: str) -> bool:
        return _pattern_allows(self.models, model)

    def to_public_dict(self) -> dict[str, Any]:
        """JSON-ready view for the admin API and the CLI (no secret, no hash)."""
        return {
            "id": self.id,
            "name": self.name,
            "user": self.user,
            "plan": self.plan,
            "features": list(self.features),
            "models": list(self.models),
            "limits": dict(self.limits),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "expires_at": self.expires_at,
        }


def check_text(value: object, what: str, *, optional: bool = False) -> str | None:
    """A non-empty, bounded string, or InvalidRequest naming the field."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{what}' must be a non-empty string.", param=what)
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"'{what}' is longer than {MAX_NAME_LENGTH} characters.", param=what)
    return value


def check_names(values: object, what: str) -> tuple[str, ...]:
    """An allow-list: a list of non-empty strings, duplicates dropped, order kept."""
    if values is None:
        return ()
    if not isinstance(values, list | tuple):
        raise InvalidRequest(f"'{what}' must be a list of strings.", param=what)
    items = list(values)
    if len(items) > MAX_LIST_ITEMS:
        raise InvalidRequest(f"'{what}' has more than {MAX_LIST_ITEMS} entries.", param=what)
    out = [check_text(item, what) for item in items]
    return tuple(dict.fromkeys(v for v in out if v is not None))


MAX_EXPIRES_AT = 2**53  # unix seconds; any later date is a mistake, not a plan


def check_expires_at(value: object) -> int | None:
    """A key's expiry: whole unix seconds, or None for never."""
    if value is None:
        return None
    if type(value) is not int or not 0 < value < MAX_EXPIRES_AT:
        raise InvalidRequest(f"expires_at must be unix seconds (an integer) or null, got "
                             f"{str(value)[:64]!r}", param="expires_at")
    return value


def check_limits(limits: object) -> dict[str, LimitValue]:
    """A key's own limits: `{tokens|requests}_per_<window>` as non-negative integers and
    `cost_usd_per_<window>` / `cost_per_<window>_usd` as non-negative finite USD."""
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise InvalidRequest("'limits' must be an object like {\"tokens_per_day\": 50000}.",
                             param="limits")
    out: dict[str, LimitValue] = {}
    for name, value in limits.items():
        if not isinstance(name, str):
            raise InvalidRequest("'limits' names must be strings.", param="limits")
        if _COUNT_LIMIT.match(name):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            kind = "a non-negative integer"
        elif _COST_LIMIT.match(name):
            ok = (isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value) and value >= 0)
            kind = "a non-negative number of USD"
        else:
            hint = difflib.get_close_matches(name[:64], LIMIT_NAMES, n=1, cutoff=0.6)
            guess = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise InvalidRequest(
                f"Unknown limit {name[:64]!r}{guess}: use "
                "<tokens|requests>_per_<minute|hour|day|month> or cost_usd_per_<window>.",
                param="limits")
        if not ok:
            raise InvalidRequest(f"Limit {name!r} must be {kind}.", param="limits")
        out[name] = value
    return out


def parse_limit_items(items: Iterable[str]) -> dict[str, LimitValue]:
    """`["tokens_per_day=50000", "cost_usd_per_day=2.5"]` (CLI form) → checked mapping."""
    raw: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise InvalidRequest(f"Limit {item!r} must look like tokens_per_day=50000.")
        text = text.strip()
        try:
            raw[name.strip()] = int(text)
        except ValueError:
            try:
                raw[name.strip()] = float(text)
            except ValueError:
                raise InvalidRequest(f"Limit {item!r}: {text!r} is not a number.") from None
    return check_limits(raw)
