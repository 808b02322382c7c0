"""Money and time at the edges. Inside, tallygate counts money in integer nano-USD and
time in unix seconds; these functions are the only places they become text (or exact
Decimals) and come back: a USD amount in a policy, a cost in a report, a timestamp in
JSON, a `--since 7d` on the command line."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, overload

from tallygate.errors import InvalidRequest
from tallygate.types import NANO_PER_USD

# ---------------------------------------------------------------- money


def to_decimal(value: Any) -> Decimal:
    """Exact decimal of a YAML/JSON number or numeric string (floats via their repr)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip().replace("_", ""))
        except InvalidOperation:
            raise ValueError("expected a number") from None
    raise ValueError("expected a number")


def usd_to_nano(value: Any) -> int:
    """USD decimal → integer nano-USD, exactly; NaN, infinity, negatives and more than
    nine decimal places are refused (they cannot be charged exactly)."""
    amount = to_decimal(value)
    if not amount.is_finite():
        raise ValueError("expected a finite USD amount, not NaN or infinity")
    if amount < 0:
        raise ValueError("expected a USD amount >= 0")
    nano = amount * NANO_PER_USD
    if nano != nano.to_integral_value():
        raise ValueError("expected a USD amount with at most 9 decimal places (1 nano-USD)")
    return int(nano)


def usd_text(nusd: int, *, min_places: int = 0) -> str:
    """Exact USD decimal text of a nano-USD amount, trailing zeros dropped down to
    `min_places`: 1234 → "0.000001234", 0 → "0" (or "0.00" with min_places=2)."""
    sign = "-" if nusd < 0 else ""
    whole, frac = divmod(abs(nusd), NANO_PER_USD)
    places = f"{frac:09d}".rstrip("0").ljust(min_places, "0")
    return f"{sign}{whole}.{places}" if places else f"{sign}{whole}"


def dollars(nusd: int) -> str:
    """`usd_text` with at least two places (0.5 → "0.50"), as CI outputs write amounts."""
    return usd_text(nusd, min_places=2)


def usd(nusd: int) -> Decimal:
    """The exact Decimal USD of a nano-USD amount."""
    return Decimal(usd_text(nusd))


def usd_display(nusd: int, places: int = 6) -> str:
    """For tables: `$0.001235` (rounded half-up to `places`; the JSON stays exact)."""
    q = usd(nusd).quantize(Decimal(1).scaleb(-places), rounding="ROUND_HALF_UP")
    return f"${q}"


# ---------------------------------------------------------------- time


@overload
def iso(ts: float) -> str: ...
@overload
def iso(ts: None) -> None: ...
def iso(ts: float | None) -> str | None:
    """Unix seconds → ISO 8601 in UTC with a `Z` (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def iso_seconds(ts: float) -> str:
    """`iso` to the whole second, for reset times and other human-facing instants."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def from_iso(text: str | None) -> float | None:
    """ISO 8601 (as `iso` writes it) → unix seconds (None stays None)."""
    return None if text is None else datetime.fromisoformat(text).timestamp()


def minute_text(ts: float | None) -> str:
    """`2026-11-01 12:00` (UTC) for a table cell; `-` when there is no time."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M")


_RELATIVE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: float, *, ahead: bool = False) -> float:
    """`24h`, `7d`, `30m`, `2w`, `90s` (that long before `now`, or after it when `ahead`:
    an expiry), an ISO date (midnight UTC) or an ISO date-time (UTC when it has no
    offset) → unix seconds."""
    m = _RELATIVE.match(text)
    if m:
        span = int(m.group(1)) * _UNIT[m.group(2)]
        return now + span if ahead else now - span
    try:
        if len(text.strip()) == 10:
            d = date.fromisoformat(text.strip())
            return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(
            f"bad time {text!r}: use e.g. 24h, 7d, 2026-11-01 or 2026-11-01T12:00"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
