"""Window arithmetic: which bucket `now` falls in and when it resets. Pure; UTC.

Calendar windows (the default) reset at the top of the minute/hour, UTC midnight and
the first of the month. Rolling windows are split into ROLLING_SLOTS slots; the used
amount is the sum of the slots still inside the window.

The lifetime window (`Window.RUN`, a run's whole life) is one bucket, number 0, that
never ends: its reset time is `NEVER` (infinity), and it cannot roll. Its counters are
dropped by the stores once nobody has written to them for `storage.run_ttl`."""

from __future__ import annotations

import calendar
import math
from datetime import UTC, datetime

from tallygate.types import Window

ROLLING_SLOTS = 60
NEVER = math.inf  # the reset time of a lifetime window
CALENDAR_WINDOWS = (Window.MINUTE, Window.HOUR, Window.DAY, Window.MONTH)
_FIXED_SECONDS = {Window.MINUTE: 60, Window.HOUR: 3600, Window.DAY: 86400}
_MONTH_SECONDS = 30 * 86400  # length of a rolling "month"


def is_lifetime(window: Window) -> bool:
    """True for the window that never resets (a run's whole life)."""
    return window is Window.RUN


def window_seconds(window: Window) -> int:
    """Nominal length; a calendar month uses its real length via bucket_bounds().
    (A lifetime window has none: ValueError.)"""
    if window is Window.RUN:
        raise ValueError("the lifetime window has no length")
    return _FIXED_SECONDS.get(window, _MONTH_SECONDS)


def bucket(window: Window, now: float) -> int:
    """Calendar bucket number of `now` (months count from year 0; lifetime: 0)."""
    if window is Window.MONTH:
        t = datetime.fromtimestamp(now, UTC)
        return t.year * 12 + t.month - 1
    if window is Window.RUN:
        return 0
    return int(now // _FIXED_SECONDS[window])


def bucket_bounds(window: Window, number: int) -> tuple[float, float]:
    """[start, end) of a calendar bucket in unix seconds (lifetime: all of time)."""
    if window is Window.RUN:
        return -math.inf, NEVER
    if window is Window.MONTH:
        year, month0 = divmod(number, 12)
        start = calendar.timegm((year, month0 + 1, 1, 0, 0, 0))
        ny, nm0 = divmod(number + 1, 12)
        end = calendar.timegm((ny, nm0 + 1, 1, 0, 0, 0))
        return float(start), float(end)
    size = _FIXED_SECONDS[window]
    return float(number * size), float((number + 1) * size)


def reset_at(window: Window, now: float) -> float:
    """When the calendar window containing `now` ends (lifetime: NEVER)."""
    return bucket_bounds(window, bucket(window, now))[1]


def slot_seconds(window: Window) -> float:
    return window_seconds(window) / ROLLING_SLOTS


def rolling_slot(window: Window, now: float) -> int:
    """Slot number of `now` for a rolling window."""
    return int(now // slot_seconds(window))


def oldest_live_slot(window: Window, now: float) -> int:
    """Slots >= this one are inside the rolling window ending at `now`."""
    return rolling_slot(window, now) - ROLLING_SLOTS + 1


def window_id(window: Window, now: float, rolling: bool) -> int:
    """The bucket (calendar) or slot (rolling) a charge made at `now` belongs to."""
    return rolling_slot(window, now) if rolling else bucket(window, now)


def live_range(window: Window, now: float, rolling: bool) -> tuple[int, int]:
    """[oldest, current] window ids whose amounts count at `now`: one calendar bucket,
    or the ROLLING_SLOTS slots of a rolling window."""
    if rolling:
        current = rolling_slot(window, now)
        return current - ROLLING_SLOTS + 1, current
    current = bucket(window, now)
    return current, current


def rolling_slot_leaves(window: Window, slot: int) -> float:
    """When `slot` falls out of its rolling window (its amounts stop counting)."""
    return (slot + ROLLING_SLOTS) * slot_seconds(window)


def room_returns_at(
    window: Window, now: float, rolling: bool, oldest_nonzero: int | None
) -> float:
    """When room comes back at the latest: the end of the calendar bucket, or when the
    oldest slot still holding an amount leaves the rolling window."""
    if not rolling:
        return reset_at(window, now)
    slot = rolling_slot(window, now) if oldest_nonzero is None else oldest_nonzero
    return rolling_slot_leaves(window, slot)


def counter_name(key: str, window: Window, rolling: bool) -> str:
    """Storage name of a limit's counters: the same key under another window kind
    never shares (or mixes up) buckets and slots."""
    return ("r:" if rolling else "c:") + window + ":" + key  # (a StrEnum adds as its value)


class LiveRanges:
    """live_range(), remembered until `now` leaves the bucket or slot: the in-memory
    stores ask for the same window thousands of times a second."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[tuple[Window, bool], tuple[float, float, int, int]] = {}

    def get(self, window: Window, now: float, rolling: bool) -> tuple[int, int]:
        known = self._known.get((window, rolling))
        if known is not None and known[0] <= now < known[1]:
            return known[2], known[3]
        oldest, current = live_range(window, now, rolling)
        if rolling:
            size = slot_seconds(window)
            start, end = current * size, (current + 1) * size
        else:
            start, end = bucket_bounds(window, current)
        self._known[(window, rolling)] = (start, end, oldest, current)
        return oldest, current
