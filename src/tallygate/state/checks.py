"""Argument checks every state backend runs before touching its data, so a bad call is
the same InvalidRequest on memory, SQLite and Redis (the conformance suite checks it),
never a crash inside a store.

Every amount is a Python int bounded by MAX_AMOUNT (int64, what SQLite INTEGER and Redis
HINCRBY hold: 9.2e18 nano-USD is $9.2 billion); totals of one window stay below it too."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence

from tallygate.errors import InvalidRequest
from tallygate.types import Hold, Metric, Window

MAX_AMOUNT = 2**63 - 1
MAX_REQUEST_ID = 200


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
        if hold.rolling and hold.window is Window.RUN:
            raise InvalidRequest(f"hold {hold.key!r}: the lifetime (run) window cannot roll")
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


_METRICS = tuple(m.value for m in Metric)


def check_extend(request_id: object, more: Mapping[str, int], lease: object, now: object
                 ) -> dict[str, int]:
    """Inputs of extend(): the growth per metric name (copied, zero entries dropped)."""
    check_request(request_id, now)
    check_time("lease", lease)
    if lease <= 0:  # type: ignore[operator]
        raise InvalidRequest(f"lease must be positive, got {lease!r}")
    if not isinstance(more, Mapping):
        raise InvalidRequest(f"more must map metric names to ints, got {more!r}")
    out: dict[str, int] = {}
    for name, value in more.items():
        if name not in _METRICS:
            hint = difflib.get_close_matches(str(name), _METRICS, n=1)
            guess = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise InvalidRequest(f"more: unknown metric {name!r}{guess}; expected one of "
                                 f"{', '.join(_METRICS)}")
        if not _is_int(value) or not 0 <= value <= MAX_AMOUNT:
            raise InvalidRequest(f"more[{name!r}] must be an int in [0, 2**63-1], "
                                 f"got {value!r}")
        if value:
            out[str(name)] = value
    return out


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


def check_flag_name(name: object) -> None:
    """A flag is named by a non-empty string (the feature's name)."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"a flag needs a non-empty name, got {name!r}")


def check_flag(name: object, on: object) -> None:
    check_flag_name(name)
    if not isinstance(on, bool):
        raise InvalidRequest(f"set_flag needs a name and a bool, got {name!r}, {on!r}")
