"""State stores: `from_url()` picks the backend, and the input checks every backend
shares (bad input gets a clear InvalidRequest, never a crash inside a store).

Every amount is a Python int bounded by MAX_AMOUNT (int64, what SQLite INTEGER and Redis
HINCRBY hold: 9.2e18 nano-USD is $9.2 billion); totals of one window stay below it too."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from tallygate.errors import ConfigError, InvalidRequest
from tallygate.state.base import StateStore
from tallygate.types import Hold, Metric, Window

MAX_AMOUNT = 2**63 - 1
MAX_REQUEST_ID = 200

__all__ = ["MAX_AMOUNT", "StateStore", "check_actual", "check_holds", "from_url"]


def from_url(url: str, **opts: Any) -> StateStore:
    """memory://, sqlite:///PATH (or sqlite:///:memory:), redis://HOST:PORT/DB, rediss://.
    `owner=True` opens a SQLite file in owner mode (state/sqlite_owner.py)."""
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme == "memory":
        from tallygate.state.memory import MemoryStore

        return MemoryStore(**opts)
    if scheme == "sqlite":
        from tallygate.state.sqlite import SqliteStore

        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"state URL {url!r}: expected sqlite:///PATH or sqlite:///:memory:")
        if opts.pop("owner", False):  # one process keeps the limits in memory
            from tallygate.state.sqlite_owner import OwnedSqliteStore

            return OwnedSqliteStore(path, **opts)
        return SqliteStore(path, **opts)
    if scheme in ("redis", "rediss"):
        from tallygate.state.redis import RedisStore

        return RedisStore(url, **opts)
    raise ConfigError(
        f"state URL {url!r}: unknown scheme {scheme!r}; expected memory://, "
        "sqlite:///PATH or redis://HOST:PORT/DB"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_request(request_id: object, now: object) -> None:
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_REQUEST_ID:
        raise InvalidRequest(f"request_id must be a non-empty string of at most "
                             f"{MAX_REQUEST_ID} characters, got {request_id!r}")
    check_time("now", now)


def check_time(name: str, value: object) -> None:
    kind = type(value)
    if (kind is not float and kind is not int) or not math.isfinite(value):  # type: ignore[arg-type]
        raise InvalidRequest(f"{name} must be a finite number of seconds, got {value!r}")


def check_holds(request_id: object, holds: Sequence[Hold], lease: object, now: object) -> None:
    """Reject malformed reservations before any backend touches its state."""
    check_request(request_id, now)
    check_time("lease", lease)
    if lease <= 0:  # type: ignore[operator]
        raise InvalidRequest(f"lease must be positive, got {lease!r}")
    seen: set[tuple[str, Window, bool]] = set()
    for hold in holds:
        if type(hold) is not Hold or type(hold.key) is not str or not hold.key:
            raise InvalidRequest(f"each hold must be a Hold with a non-empty key, got {hold!r}")
        # `type(x) is int` is the hot-path check (it also refuses bool and float).
        if type(hold.amount) is not int or not 0 <= hold.amount <= MAX_AMOUNT:
            raise InvalidRequest(f"hold {hold.key!r}: amount must be an int in "
                                 f"[0, 2**63-1], got {hold.amount!r}")
        if type(hold.limit) is not int or not -MAX_AMOUNT <= hold.limit <= MAX_AMOUNT:
            raise InvalidRequest(f"hold {hold.key!r}: limit must be an int, got {hold.limit!r}")
        if type(hold.window) is not Window or type(hold.metric) is not Metric:
            raise InvalidRequest(f"hold {hold.key!r}: window/metric must be Window/Metric")
        name = (hold.key, hold.window, bool(hold.rolling))
        if name in seen:
            raise InvalidRequest(f"hold {hold.key!r} appears twice in one reservation")
        seen.add(name)


def check_actual(request_id: object, actual: Mapping[str, int], now: object) -> None:
    check_request(request_id, now)
    if not isinstance(actual, Mapping):
        raise InvalidRequest(f"actual must map metric names to ints, got {actual!r}")
    for name, value in actual.items():
        if not _is_int(value) or not 0 <= value <= MAX_AMOUNT:
            raise InvalidRequest(f"actual[{name!r}] must be an int in [0, 2**63-1], "
                                 f"got {value!r}")


def check_finish(request_id: object, actual: Mapping[str, int] | None, now: object
                 ) -> dict[str, int] | None:
    """Inputs of finish_and_read: a settle's actual usage (copied) or None (a release)."""
    if actual is None:
        check_request(request_id, now)
        return None
    check_actual(request_id, actual, now)
    return dict(actual)


def check_usage_args(key: object, limit: object, window: object, now: object) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"key must be a non-empty string, got {key!r}")
    if not _is_int(limit) or not isinstance(window, Window):
        raise InvalidRequest("usage(): limit must be an int and window a Window")
    check_time("now", now)
