"""Money and time at the edges (tallygate.units): exact both ways."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallygate.errors import InvalidRequest
from tallygate.units import (
    dollars,
    from_iso,
    iso,
    iso_seconds,
    minute_text,
    parse_when,
    usd,
    usd_display,
    usd_text,
    usd_to_nano,
)

T0 = 1_793_491_200.0  # 2026-11-01T00:00:00Z


@pytest.mark.parametrize(("nusd", "text", "two"), [
    (0, "0", "0.00"), (1, "0.000000001", "0.000000001"), (1_234, "0.000001234", "0.000001234"),
    (500_000_000, "0.5", "0.50"), (10_000_000_000, "10", "10.00"),
    (-1_500_000_000, "-1.5", "-1.50"),
])
def test_usd_text(nusd: int, text: str, two: str) -> None:
    assert usd_text(nusd) == text and dollars(nusd) == two
    assert usd(nusd) == Decimal(text)


@given(st.integers(min_value=0, max_value=10**18))
def test_usd_text_round_trips_exactly(nusd: int) -> None:
    assert usd_to_nano(usd_text(nusd)) == nusd


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-1", "0.0000000001", True, "ten"])
def test_usd_to_nano_refuses_what_it_cannot_charge_exactly(bad: object) -> None:
    with pytest.raises(ValueError):
        usd_to_nano(bad)


def test_usd_display_rounds_half_up() -> None:
    assert usd_display(1_234_500) == "$0.001235"
    assert usd_display(5_000_000_000, places=2) == "$5.00"


def test_time_text() -> None:
    assert iso(T0 + 0.25) == "2026-11-01T00:00:00.250000Z" and iso(None) is None
    assert iso_seconds(T0 + 0.25) == "2026-11-01T00:00:00Z"
    assert from_iso(iso(T0 + 0.25)) == T0 + 0.25 and from_iso(None) is None
    assert minute_text(T0 + 90) == "2026-11-01 00:01" and minute_text(None) == "-"


def test_parse_when() -> None:
    now = T0 + 86_400
    assert parse_when("24h", now) == T0 and parse_when("2w", now) == now - 14 * 86_400
    assert parse_when("2026-11-01", now) == T0
    assert parse_when("2026-11-01T06:00:00+01:00", now) == T0 + 5 * 3600
    with pytest.raises(InvalidRequest, match=r"use e\.g\. 24h, 7d"):
        parse_when("yesterday-ish", now)
