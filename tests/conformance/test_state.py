"""One conformance suite for every state store: memory, sqlite (shared and owner mode)
and redis (a real redis-server from the session fixture). Time is injected everywhere."""

from __future__ import annotations

import calendar
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tallygate.core.windows import ROLLING_SLOTS, bucket_bounds, counter_name
from tallygate.errors import ConfigError, InvalidRequest
from tallygate.state import StateStore, from_url
from tallygate.state.guard import GuardedStore
from tallygate.types import Hold, LimitUsage, Metric, NotHeld, Window
from tests.support.state import (
    BACKENDS,
    DAY_START,
    T0,
    StoreFactory,
    abandon,
    redis_client,
    tokens,
    used_reserved,
)


# -- admission at the boundary -------------------------------------------------------
async def test_exactly_at_limit_admits_one_over_denies(store: StateStore) -> None:
    assert await store.reserve("a", [tokens("k", 600, 1000)], lease=60, now=T0) is None
    assert await store.reserve("b", [tokens("k", 400, 1000)], lease=60, now=T0) is None
    denial = await store.reserve("c", [tokens("k", 1, 1000)], lease=60, now=T0)
    assert denial is not None
    assert (denial.key, denial.limit, denial.used, denial.requested) == ("k", 1000, 1000, 1)
    assert denial.reset_at == DAY_START + 86400
    assert (denial.window, denial.metric) == (Window.DAY, Metric.TOKENS)
    usage = await store.usage("k", limit=1000, window=Window.DAY, now=T0)
    assert (usage.used, usage.reserved, usage.remaining) == (0, 1000, 0)


async def test_zero_amount_always_fits_and_nonpositive_limit_admits_nothing(
    store: StateStore,
) -> None:
    assert await store.reserve("z", [tokens("k", 0, 0)], lease=60, now=T0) is None
    assert await store.reserve("n", [tokens("k", 1, 0)], lease=60, now=T0) is not None
    assert await store.reserve("m", [tokens("j", 1, -5)], lease=60, now=T0) is not None
    assert await store.reserve("full", [tokens("f", 10, 10)], lease=60, now=T0) is None
    assert await store.reserve("zf", [tokens("f", 0, 10)], lease=60, now=T0) is None


async def test_all_or_nothing_across_limits(store: StateStore) -> None:
    await store.reserve("pre", [tokens("c", 950, 1000)], lease=60, now=T0)
    holds = [tokens("a", 100, 1000), tokens("b", 100, 1000), tokens("c", 100, 1000)]
    denial = await store.reserve("multi", holds, lease=60, now=T0)
    assert denial is not None and denial.key == "c" and denial.used == 950
    assert await used_reserved(store, "a") == (0, 0)
    assert await used_reserved(store, "b") == (0, 0)
    assert await used_reserved(store, "c") == (0, 950)


async def test_reserve_is_idempotent_while_held(store: StateStore) -> None:
    hold = [tokens("k", 300, 1000)]
    assert await store.reserve("r", hold, lease=60, now=T0) is None
    assert await store.reserve("r", hold, lease=60, now=T0) is None
    assert await used_reserved(store, "k") == (0, 300)
    await store.settle("r", {"tokens": 10}, now=T0)
    with pytest.raises(InvalidRequest, match="already settled"):
        await store.reserve("r", hold, lease=60, now=T0)


# -- settle, release, overrun --------------------------------------------------------
async def test_settle_charges_actual_frees_rest_and_is_idempotent(store: StateStore) -> None:
    holds = [tokens("t", 500, 1000),
             Hold("c", 2_000, 10_000, Window.MONTH, Metric.COST),
             Hold("q", 1, 10, Window.MINUTE, Metric.REQUESTS)]
    assert await store.reserve("r", holds, lease=60, now=T0) is None
    result = await store.settle("r", {"tokens": 120, "cost": 1_500, "requests": 1}, now=T0)
    assert result.charged == {"t": 120, "c": 1_500, "q": 1}
    assert result.overrun == {} and not result.already_settled
    assert await used_reserved(store, "t") == (120, 0)
    assert await used_reserved(store, "c", 10_000, Window.MONTH) == (1_500, 0)
    again = await store.settle("r", {"tokens": 120}, now=T0)
    assert again.already_settled and again.charged == {}
    assert await used_reserved(store, "t") == (120, 0)
    unknown = await store.settle("never-reserved", {"tokens": 5}, now=T0)
    assert unknown.already_settled


async def test_missing_metric_charges_zero(store: StateStore) -> None:
    await store.reserve("r", [Hold("c", 50, 100, Window.DAY, Metric.COST)], lease=60, now=T0)
    result = await store.settle("r", {"tokens": 999}, now=T0)
    assert result.charged == {"c": 0}
    assert await used_reserved(store, "c", 100) == (0, 0)


async def test_overrun_is_charged_and_reported(store: StateStore) -> None:
    await store.reserve("r", [tokens("k", 100, 1000)], lease=60, now=T0)
    result = await store.settle("r", {"tokens": 130}, now=T0)
    assert result.charged == {"k": 130} and result.overrun == {"k": 30}
    assert await used_reserved(store, "k") == (130, 0)


async def test_release_gives_back_and_is_idempotent(store: StateStore) -> None:
    await store.reserve("r", [tokens("k", 700, 1000)], lease=60, now=T0)
    await store.release("r", now=T0)
    await store.release("r", now=T0)
    await store.release("unknown", now=T0)
    assert await used_reserved(store, "k") == (0, 0)
    after = await store.settle("r", {"tokens": 50}, now=T0)
    assert after.already_settled and after.charged == {}
    assert await used_reserved(store, "k") == (0, 0)
    assert await store.reserve("s", [tokens("k", 1000, 1000)], lease=60, now=T0) is None


# -- lease expiry (injected clock) ------------------------------------------------------
async def test_expired_lease_is_reclaimed_by_the_next_toucher(store: StateStore) -> None:
    await store.reserve("crashed", [tokens("k", 800, 1000)], lease=30, now=T0)
    assert await store.reserve("x", [tokens("k", 300, 1000)], lease=30, now=T0 + 29.9) \
        is not None
    assert await used_reserved(store, "k", now=T0 + 29.9) == (0, 800)
    assert await used_reserved(store, "k", now=T0 + 30) == (0, 0)
    assert await store.reserve("y", [tokens("k", 1000, 1000)], lease=30, now=T0 + 30) is None


async def test_settle_after_expiry_charges_actual_once(store: StateStore) -> None:
    """Documented choice: the call happened, so its actual usage is charged even after
    the lease expired; the expired hold is given back exactly once."""
    await store.reserve("slow", [tokens("k", 400, 1000)], lease=10, now=T0)
    await store.reserve("other", [tokens("k", 100, 1000)], lease=600, now=T0)
    assert await used_reserved(store, "k", now=T0 + 11) == (0, 100)  # reclaimed
    result = await store.settle("slow", {"tokens": 350}, now=T0 + 12)
    assert result.charged == {"k": 350} and not result.already_settled
    assert await used_reserved(store, "k", now=T0 + 12) == (350, 100)
    # Expired but never touched: settle itself frees the hold (once).
    await store.reserve("late", [tokens("j", 500, 1000)], lease=10, now=T0)
    await store.settle("late", {"tokens": 200}, now=T0 + 50)
    assert await used_reserved(store, "j", now=T0 + 50) == (200, 0)
    assert (await store.settle("late", {"tokens": 200}, now=T0 + 51)).already_settled


async def test_release_after_expiry_does_not_give_back_twice(store: StateStore) -> None:
    await store.reserve("a", [tokens("k", 600, 1000)], lease=5, now=T0)
    await store.reserve("b", [tokens("k", 300, 1000)], lease=500, now=T0 + 6)
    await store.release("a", now=T0 + 7)
    assert await used_reserved(store, "k", now=T0 + 7) == (0, 300)


# -- windows ------------------------------------------------------------------------
async def test_settle_charges_the_window_the_hold_was_made_in(store: StateStore) -> None:
    midnight = DAY_START + 86400
    await store.reserve("r", [tokens("k", 500, 1000)], lease=60, now=midnight - 1)
    await store.settle("r", {"tokens": 400}, now=midnight + 1)
    assert await used_reserved(store, "k", now=midnight - 0.5) == (400, 0)
    assert await used_reserved(store, "k", now=midnight + 1) == (0, 0)


def _month_end(year: int, month: int) -> float:
    y, m = (year + 1, 1) if month == 12 else (year, month + 1)
    return float(calendar.timegm((y, m, 1, 0, 0, 0)))


ROLLOVERS = [
    (Window.MINUTE, (T0 // 60 + 1) * 60),
    (Window.HOUR, (T0 // 3600 + 1) * 3600),
    (Window.DAY, DAY_START + 86400),
    (Window.MONTH, _month_end(2024, 2)),  # leap February: 29 days
    (Window.MONTH, _month_end(2023, 2)),  # 28 days
    (Window.MONTH, _month_end(2024, 4)),  # 30 days
    (Window.MONTH, _month_end(2024, 12)),  # year change
]


@pytest.mark.parametrize(("window", "end"), ROLLOVERS)
async def test_calendar_window_rolls_over_at_the_exact_instant(
    store: StateStore, window: Window, end: float
) -> None:
    start = end - 1
    assert await store.reserve("fill", [tokens("k", 100, 100, window)], lease=1e7,
                               now=start) is None
    await store.settle("fill", {"tokens": 100}, now=start)
    denial = await store.reserve("late", [tokens("k", 1, 100, window)], lease=60,
                                 now=end - 0.001)
    assert denial is not None and denial.reset_at == end
    assert await used_reserved(store, "k", 100, window, now=end - 0.001) == (100, 0)
    assert await store.reserve("new", [tokens("k", 100, 100, window)], lease=60,
                               now=end) is None
    assert await used_reserved(store, "k", 100, window, now=end) == (0, 100)


async def test_month_bucket_spans_the_whole_month(store: StateStore) -> None:
    feb_start = float(calendar.timegm((2024, 2, 1, 0, 0, 0)))
    assert bucket_bounds(Window.MONTH, 2024 * 12 + 1) == (feb_start, _month_end(2024, 2))
    await store.reserve("a", [tokens("k", 60, 100, Window.MONTH)], lease=60, now=feb_start)
    await store.settle("a", {"tokens": 60}, now=feb_start)
    denial = await store.reserve("b", [tokens("k", 41, 100, Window.MONTH)], lease=60,
                                 now=_month_end(2024, 2) - 1)
    assert denial is not None and denial.used == 60


async def test_rolling_window_drops_slots_as_they_leave(store: StateStore) -> None:
    """Rolling minute: 60 one-second slots; an amount counts until its slot leaves."""
    t = (T0 // 60) * 60 + 10.5
    roll = [tokens("k", 60, 100, Window.MINUTE, rolling=True)]
    await store.reserve("a", roll, lease=600, now=t)
    await store.settle("a", {"tokens": 60}, now=t)
    later = t + 20
    await store.reserve("b", [tokens("k", 40, 100, Window.MINUTE, True)], lease=600, now=later)
    await store.settle("b", {"tokens": 40}, now=later)
    denial = await store.reserve("c", [tokens("k", 1, 100, Window.MINUTE, True)], lease=60,
                                 now=t + 59)
    assert denial is not None and denial.used == 100
    assert denial.reset_at == (int(t) + ROLLING_SLOTS) * 1.0  # when slot of "a" leaves
    # Slot of "a" (second int(t)) leaves the window at int(t) + 60 exactly.
    gone = int(t) + 60.0
    assert await used_reserved(store, "k", 100, Window.MINUTE, True, now=gone - 0.01) == \
        (100, 0)
    assert await used_reserved(store, "k", 100, Window.MINUTE, True, now=gone) == (40, 0)
    assert await store.reserve("d", [tokens("k", 60, 100, Window.MINUTE, True)], lease=60,
                               now=gone) is None
    # Rolling and calendar counters of one key never mix.
    assert await used_reserved(store, "k", 100, Window.MINUTE, False, now=gone) == (0, 0)


async def test_rolling_hour_slots(store: StateStore) -> None:
    t = (T0 // 3600) * 3600
    hold = [tokens("h", 500, 500, Window.HOUR, rolling=True)]
    await store.reserve("a", hold, lease=60, now=t + 30)
    await store.settle("a", {"tokens": 500}, now=t + 30)
    assert await store.reserve("b", hold, lease=60, now=t + 3599) is not None
    # Slots are 60 s: the slot [t, t+60) holding the charge leaves at t + 3600.
    assert await store.reserve("c", hold, lease=60, now=t + 3600) is None


# -- exact integers -------------------------------------------------------------------
async def test_large_integer_amounts_stay_exact(store: StateStore) -> None:
    limit = 2**62 + 7  # far above 2^53: doubles would round these
    big = 2**61 + 3
    cost = [Hold("usd", big, limit, Window.MONTH, Metric.COST)]
    assert await store.reserve("a", cost, lease=60, now=T0) is None
    assert await store.reserve("b", cost, lease=60, now=T0) is None
    denial = await store.reserve("c", [Hold("usd", 2, limit, Window.MONTH, Metric.COST)],
                                 lease=60, now=T0)
    assert denial is not None and denial.used == 2 * big  # limit - used == 1
    assert await store.reserve("d", [Hold("usd", 1, limit, Window.MONTH, Metric.COST)],
                               lease=60, now=T0) is None
    await store.settle("a", {"cost": big - 1}, now=T0)
    usage = await store.usage("usd", limit=limit, window=Window.MONTH, now=T0)
    assert (usage.used, usage.reserved) == (big - 1, big + 1)


@pytest.mark.parametrize("bad", [
    Hold("k", -1, 10, Window.DAY), Hold("k", 1.5, 10, Window.DAY),  # type: ignore[arg-type]
    Hold("k", True, 10, Window.DAY), Hold("", 1, 10, Window.DAY),  # type: ignore[arg-type]
    Hold("k", 2**63, 2**63, Window.DAY), Hold("k", 1, 10.0, Window.DAY),  # type: ignore[arg-type]
    Hold("k", 1, 10, "day"),  # type: ignore[arg-type]
])
async def test_bad_holds_are_rejected_clearly(store: StateStore, bad: Hold) -> None:
    with pytest.raises(InvalidRequest):
        await store.reserve("r", [bad], lease=60, now=T0)


async def test_bad_arguments_are_rejected_clearly(store: StateStore) -> None:
    hold = tokens("k", 1, 10)
    with pytest.raises(InvalidRequest, match="twice"):
        await store.reserve("r", [hold, hold], lease=60, now=T0)
    with pytest.raises(InvalidRequest, match="lease"):
        await store.reserve("r", [hold], lease=0, now=T0)
    with pytest.raises(InvalidRequest, match="now"):
        await store.reserve("r", [hold], lease=60, now=float("nan"))
    with pytest.raises(InvalidRequest, match="request_id"):
        await store.reserve("", [hold], lease=60, now=T0)
    await store.reserve("r", [hold], lease=60, now=T0)
    with pytest.raises(InvalidRequest, match="actual"):
        await store.settle("r", {"tokens": -3}, now=T0)
    with pytest.raises(InvalidRequest, match="actual"):
        await store.settle("r", {"tokens": float("nan")}, now=T0)  # type: ignore[dict-item]
    assert await used_reserved(store, "k", 10) == (0, 1)


# -- flags and claims -----------------------------------------------------------------
async def test_flags_and_version(store: StateStore) -> None:
    assert await store.get_flag("code_review") is None
    assert await store.flags() == {}
    start = await store.flags_version()
    await store.set_flag("code_review", False)
    await store.set_flag("quick", True)
    assert await store.get_flag("code_review") is False
    assert await store.flags() == {"code_review": False, "quick": True}
    await store.set_flag("code_review", True)
    assert await store.get_flag("code_review") is True
    assert await store.flags_version() == start + 3


@pytest.mark.parametrize("guarded", [False, True], ids=["bare", "guarded"])
async def test_clear_flag_returns_to_the_policy_value(
    store_factory: StoreFactory, guarded: bool
) -> None:
    """clear_flag forgets the run-time value (the policy's applies again), bumps the
    version so replicas notice, and is seen by every store sharing the state; the
    fail-mode guard passes it through to the shared store."""
    one, two = await store_factory(), await store_factory()
    if guarded:
        one = GuardedStore(one, "fail_closed")
    await one.set_flag("code_review", False)
    await one.set_flag("quick", True)
    before = await two.flags_version()
    assert await one.clear_flag("code_review") is True
    assert await two.flags_version() > before
    assert await two.get_flag("code_review") is None
    assert await two.flags() == {"quick": True}
    assert await one.clear_flag("code_review") is False  # nothing left to clear
    with pytest.raises(InvalidRequest):
        await one.clear_flag("")


async def test_claim_is_won_once_per_ttl(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    assert await one.claim("alert:x", 60, now=T0) is True
    assert await two.claim("alert:x", 60, now=T0 + 1) is False
    assert await one.claim("alert:x", 60, now=T0 + 59.9) is False
    assert await two.claim("alert:y", 60, now=T0 + 1) is True
    assert await two.claim("alert:x", 60, now=T0 + 60) is True


async def test_stores_sharing_state_see_each_other(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    await one.reserve("r", [tokens("k", 700, 1000)], lease=60, now=T0)
    assert await two.reserve("s", [tokens("k", 301, 1000)], lease=60, now=T0) is not None
    await two.settle("r", {"tokens": 5}, now=T0)  # settled by another replica
    assert await used_reserved(one, "k") == (5, 0)


# -- backend specifics ----------------------------------------------------------------
def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown scheme"):
        from_url("postgres://x/y")
    with pytest.raises(ConfigError, match="sqlite"):
        from_url("sqlite://")


async def test_sqlite_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    first = from_url(url)
    await first.reserve("r", [tokens("k", 500, 1000)], lease=60, now=T0)
    await first.settle("r", {"tokens": 321}, now=T0)
    await first.reserve("held", [tokens("k", 100, 1000)], lease=60, now=T0)
    await first.set_flag("f", True)
    await first.close()
    second = from_url(url)
    assert await used_reserved(second, "k") == (321, 100)
    assert await second.get_flag("f") is True
    assert (await second.settle("r", {"tokens": 1}, now=T0)).already_settled
    await second.settle("held", {"tokens": 50}, now=T0)
    assert await used_reserved(second, "k") == (371, 0)
    await second.close()


async def test_sqlite_gives_back_holds_of_the_old_layout(tmp_path: Path) -> None:
    """In 0.1 reservations lived in state_reservations + state_lines: live holds
    found there on opening are given back once and the old tables dropped."""
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("""
        CREATE TABLE state_cells (counter TEXT NOT NULL, wid INTEGER NOT NULL,
          used INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0,
          PRIMARY KEY (counter, wid)) WITHOUT ROWID;
        CREATE TABLE state_reservations (rid TEXT PRIMARY KEY, state TEXT NOT NULL,
          touched REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE state_lines (rid TEXT NOT NULL, idx INTEGER NOT NULL,
          key TEXT NOT NULL, counter TEXT NOT NULL, wid INTEGER NOT NULL,
          amount INTEGER NOT NULL, metric TEXT NOT NULL, expires REAL NOT NULL,
          live INTEGER NOT NULL, PRIMARY KEY (rid, idx)) WITHOUT ROWID;""")
    counter = counter_name("k", Window.DAY, False)
    wid = int(T0 // 86400)
    db.execute("INSERT INTO state_cells VALUES (?, ?, 300, 250)", (counter, wid))
    db.executemany("INSERT INTO state_lines VALUES (?, 0, 'k', ?, ?, ?, 'tokens', ?, ?)",
                   [("live", counter, wid, 250, T0 + 60, 1),
                    ("done", counter, wid, 90, T0 + 60, 0)])
    db.close()
    store = from_url(f"sqlite:///{path}")
    assert await used_reserved(store, "k") == (300, 0)
    await store.close()
    db = sqlite3.connect(path)
    names = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert "state_lines" not in names and "state_reservations" not in names
    again = from_url(f"sqlite:///{path}")  # opening again changes nothing
    assert await used_reserved(again, "k") == (300, 0)
    await again.close()


async def test_sqlite_in_memory_url() -> None:
    store = from_url("sqlite:///:memory:")
    assert await store.reserve("r", [tokens("k", 10, 10)], lease=60, now=T0) is None
    assert await used_reserved(store, "k", 10) == (0, 10)
    await store.close()


async def test_redis_keys_share_one_hash_tag_and_noscript_is_handled(redis_url: str) -> None:
    from redis.crc import key_slot

    from tallygate.state.redis import RedisStore

    store = RedisStore(redis_url, namespace="tagcheck")
    assert store.key_prefix == "{tg:tagcheck}"
    await store.flush_namespace()
    await store.reserve("r", [tokens("k", 10, 100), tokens("j", 5, 100)], lease=60, now=T0)
    async with redis_client(redis_url) as redis:
        await redis.execute_command("SCRIPT", "FLUSH")  # scripts gone: NOSCRIPT path
        await store.settle("r", {"tokens": 7}, now=T0)
        await store.set_flag("f", True)
        await store.claim("c", 10, now=T0)
        names = [name async for name in redis.scan_iter(match="*tagcheck*")]
    assert names and all(name.startswith("{tg:tagcheck}:") for name in names)
    assert len({key_slot(name.encode()) for name in names}) == 1  # one Cluster slot
    assert await used_reserved(store, "j", 100) == (7, 0)
    await store.flush_namespace()
    await store.close()


async def test_redis_reads_ride_in_the_operations_one_script(redis_url: str) -> None:
    from tallygate.state.redis import RedisStore

    store = RedisStore(redis_url, namespace=uuid.uuid4().hex[:12])

    async def evalsha_calls() -> int:  # (server-wide counts, read by a client of our own)
        async with redis_client(redis_url) as redis:
            stats = await redis.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    holds = [tokens("k", 300, 1000), tokens("m", 50, 500, Window.MINUTE, rolling=True)]
    # Load both scripts first: a NOSCRIPT reply also counts as an EVALSHA call.
    await store.reserve("warm", holds, lease=60, now=T0)
    await store.release("warm", now=T0)
    before = await evalsha_calls()
    denial, usages = await store.reserve_and_read("a", holds, lease=60, now=T0, read=holds)
    assert denial is None and [(u.used, u.reserved) for u in usages] == [(0, 300), (0, 50)]
    assert await evalsha_calls() == before + 1
    result, usages = await store.finish_and_read("a", {"tokens": 40}, now=T0, read=holds)
    assert result.charged == {"k": 40, "m": 40}
    assert [(u.used, u.reserved) for u in usages] == [(40, 0), (40, 0)]
    assert await evalsha_calls() == before + 2
    await store.flush_namespace()
    await store.close()


# -- operations that also read usage (the gateway's x-ratelimit-* headers) -----------
async def test_reserve_and_read_reports_usage_just_after(store: StateStore) -> None:
    await store.reserve("a", [tokens("k", 100, 1000)], lease=60, now=T0)
    holds = [tokens("k", 300, 1000), tokens("m", 50, 500, Window.MINUTE),
             tokens("r", 20, 90, Window.HOUR, rolling=True)]
    denial, usages = await store.reserve_and_read("b", holds, lease=60, now=T0, read=holds)
    assert denial is None
    assert [(u.key, u.limit, u.used, u.reserved) for u in usages] == [
        ("k", 1000, 0, 400), ("m", 500, 0, 50), ("r", 90, 0, 20)]
    assert usages[1].reset_at == (T0 // 60 + 1) * 60
    for usage, hold in zip(usages, holds, strict=True):  # the same as a separate read
        assert usage == await store.usage(hold.key, limit=hold.limit, window=hold.window,
                                          rolling=hold.rolling, now=T0)
    again, usages = await store.reserve_and_read("b", holds, lease=60, now=T0,
                                                 read=holds[:1])
    assert again is None and [(u.used, u.reserved) for u in usages] == [(0, 400)]
    big = [tokens("k", 700, 1000)]
    denial, usages = await store.reserve_and_read("c", big, lease=60, now=T0, read=big)
    assert denial is not None and usages == []
    assert await used_reserved(store, "k") == (0, 400)


async def test_finish_and_read_settles_or_releases_and_reports(store: StateStore) -> None:
    holds = [tokens("k", 300, 1000)]
    await store.reserve("s", holds, lease=60, now=T0)
    await store.reserve("r", holds, lease=60, now=T0)
    result, usages = await store.finish_and_read("s", {"tokens": 120}, now=T0, read=holds)
    assert result.charged == {"k": 120} and not result.already_settled
    assert [(u.used, u.reserved) for u in usages] == [(120, 300)]
    result, usages = await store.finish_and_read("r", None, now=T0, read=holds)
    assert not result.charged and not result.already_settled
    assert [(u.used, u.reserved) for u in usages] == [(120, 0)]
    again, usages = await store.finish_and_read("s", {"tokens": 9}, now=T0, read=holds)
    assert again.already_settled and [(u.used, u.reserved) for u in usages] == [(120, 0)]
    result, usages = await store.finish_and_read("s", {"tokens": 9}, now=T0, read=())
    assert result.already_settled and usages == []


# -- hypothesis state machine: the invariants under any sequence -------------------------
from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from tallygate.core.windows import live_range  # noqa: E402

LIMITS = {  # key -> (limit, window, rolling)
    "day": (100, Window.DAY, False),
    "minute": (80, Window.MINUTE, False),
    "rolling": (60, Window.MINUTE, True),
}


ALL_LIMITS = [Hold(k, 0, limit, window, rolling=rolling)
              for k, (limit, window, rolling) in sorted(LIMITS.items())]


class _Model:
    """What the store must say: reservations, charges, the clock."""

    def __init__(self) -> None:
        self.now = DAY_START + 86400 - 150  # the day rolls over during a run
        self.held: dict[str, tuple[dict[str, tuple[int, int]], float]] = {}
        self.charges: list[tuple[str, int, int]] = []  # key, window id, amount
        self.late: list[tuple[str, int, int]] = []  # charges made after lease expiry

    def live(self, key: str) -> tuple[int, int]:
        _, window, rolling = LIMITS[key]
        return live_range(window, self.now, rolling)

    def used(self, key: str) -> int:
        lo, hi = self.live(key)
        return sum(a for k, w, a in self.charges if k == key and lo <= w <= hi)

    def reserved(self, key: str) -> int:
        lo, hi = self.live(key)
        return sum(lines[key][1] for lines, until in self.held.values()
                   if key in lines and until > self.now and lo <= lines[key][0] <= hi)

    def late_charged(self, key: str) -> int:
        lo, hi = self.live(key)
        return sum(a for k, w, a in self.late if k == key and lo <= w <= hi)


Reopen = Callable[[StateStore, bool], Awaitable[StateStore]]


def _machine(make: Callable[[], StateStore], reopen: Reopen | None = None
             ) -> type[RuleBasedStateMachine]:
    """`reopen(store, crash)`: the same state opened again after a clean close or, with
    crash, after the process died (the SQLite stores)."""

    class StoreMachine(RuleBasedStateMachine):
        reservations = Bundle("reservations")

        def __init__(self) -> None:
            super().__init__()
            import asyncio

            self.loop = asyncio.new_event_loop()
            self.store = make()
            self.model = _Model()
            self.count = 0

        def run(self, coro: Awaitable[object]) -> object:
            return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

        def check_reads(self, usages: list[LimitUsage], keys: list[str]) -> None:
            """What reserve_and_read / finish_and_read said matches the model after."""
            m = self.model
            assert [(u.key, u.used, u.reserved) for u in usages] == [
                (k, m.used(k), m.reserved(k)) for k in keys]

        @rule(target=reservations,
              amounts=st.dictionaries(st.sampled_from(sorted(LIMITS)),
                                      st.integers(0, 70), min_size=1),
              lease=st.sampled_from([5.0, 40.0, 500.0]), read=st.booleans())
        def reserve(self, amounts: dict[str, int], lease: float, read: bool) -> str:
            self.count += 1
            rid = f"r{self.count}"
            m = self.model
            holds = [Hold(k, a, LIMITS[k][0], LIMITS[k][1], rolling=LIMITS[k][2])
                     for k, a in amounts.items()]
            fits = all(a == 0 or m.used(k) + m.reserved(k) + a <= LIMITS[k][0]
                       for k, a in amounts.items())
            usages: list[LimitUsage] = []
            if read:
                denial, usages = self.run(self.store.reserve_and_read(
                    rid, holds, lease=lease, now=m.now, read=holds))  # type: ignore[misc]
            else:
                denial = self.run(self.store.reserve(rid, holds, lease=lease, now=m.now))
            assert (denial is None) == fits, (denial, amounts)
            if fits:
                m.held[rid] = ({k: (m.live(k)[1], a) for k, a in amounts.items()},
                               m.now + lease)
            if read:
                self.check_reads(usages, list(amounts) if fits else [])
            return rid

        @rule(rid=reservations, more=st.integers(0, 40),
              lease=st.sampled_from([5.0, 40.0, 500.0]))
        def extend(self, rid: str, more: int, lease: float) -> None:
            m = self.model
            result = self.run(self.store.extend(rid, {"tokens": more}, lease=lease,
                                                now=m.now))
            found = m.held.get(rid)
            if found is None:
                assert result == NotHeld(rid, "unknown")
                return
            lines, until = found
            if until <= m.now:
                assert result == NotHeld(rid, "expired")
                return
            fits = more == 0 or all(
                (not LIMITS[k][2] and m.live(k)[1] != wid)  # its window ended
                or m.used(k) + m.reserved(k) + more <= LIMITS[k][0]
                for k, (wid, _) in lines.items())
            assert (result is None) == fits, (result, lines, more)
            if fits:
                m.held[rid] = ({k: (wid, a + more) for k, (wid, a) in lines.items()},
                               m.now + lease)

        @rule(rid=consumes(reservations), share=st.integers(0, 100), read=st.booleans())
        def settle(self, rid: str, share: int, read: bool) -> None:
            m = self.model
            found = m.held.pop(rid, None)
            actual = {"tokens": 0}
            if found is not None:  # actual <= held: the invariant case
                actual["tokens"] = min(a for _, a in found[0].values()) * share // 100
            if read:
                result, usages = self.run(self.store.finish_and_read(
                    rid, actual, now=m.now, read=ALL_LIMITS))  # type: ignore[misc]
            else:
                result = self.run(self.store.settle(rid, actual, now=m.now))
            assert result.already_settled == (found is None)
            if found is not None:
                lines, until = found
                for key, (wid, _) in lines.items():
                    m.charges.append((key, wid, actual["tokens"]))
                    if until <= m.now:
                        m.late.append((key, wid, actual["tokens"]))
                assert result.charged == dict.fromkeys(lines, actual["tokens"])
            if read:
                self.check_reads(usages, sorted(LIMITS))

        @rule(rid=consumes(reservations), read=st.booleans())
        def release(self, rid: str, read: bool) -> None:
            self.model.held.pop(rid, None)
            if read:
                result, usages = self.run(self.store.finish_and_read(
                    rid, None, now=self.model.now, read=ALL_LIMITS))  # type: ignore[misc]
                assert not result.charged and not result.already_settled
                self.check_reads(usages, sorted(LIMITS))
            else:
                self.run(self.store.release(rid, now=self.model.now))

        @rule(dt=st.sampled_from([0.0, 0.5, 3.0, 17.0, 45.0, 61.0]))
        def tick(self, dt: float) -> None:
            self.model.now += dt

        @precondition(lambda self: reopen is not None)
        @rule(crash=st.booleans())
        def restart(self, crash: bool) -> None:
            assert reopen is not None
            self.store = self.run(reopen(self.store, crash))  # type: ignore[assignment]

        @invariant()
        def matches_model_and_never_overspends(self) -> None:
            m = self.model
            for key, (limit, window, rolling) in LIMITS.items():
                usage = self.run(self.store.usage(key, limit=limit, window=window,
                                                  rolling=rolling, now=m.now))
                assert (usage.used, usage.reserved) == (m.used(key), m.reserved(key)), key
                assert usage.used + usage.reserved <= limit + m.late_charged(key)

        def teardown(self) -> None:
            self.run(self.store.close())
            self.loop.close()

    return StoreMachine


@pytest.mark.parametrize("kind", BACKENDS)
def test_state_machine_invariants(kind: str, request: pytest.FixtureRequest,
                                  tmp_path: Path) -> None:
    if kind == "memory":
        def make() -> StateStore:
            return from_url("memory://")
    reopen: Reopen | None = None
    if kind.startswith("sqlite"):
        owner = kind == "sqlite-owner"
        opts = {"owner": True, "flush_seconds": 0.005} if owner else {}

        made = ""  # the file of the running example (hypothesis runs one at a time)

        def make() -> StateStore:
            nonlocal made
            made = f"sqlite:///{tmp_path / uuid.uuid4().hex}.db"
            return from_url(made, **opts)

        async def reopen(store: StateStore, crash: bool) -> StateStore:
            if crash and owner:
                await abandon(store)  # type: ignore[arg-type]
            else:
                await store.close()
            return from_url(made, **opts)
    elif kind == "redis":  # (memory must not fall through to here)
        redis_url = request.getfixturevalue("redis_url")

        def make() -> StateStore:
            return from_url(redis_url, namespace=uuid.uuid4().hex[:12])
    machine = _machine(make, reopen)
    examples = 60 if kind == "memory" else 20
    machine.TestCase.settings = settings(max_examples=examples, stateful_step_count=40,
                                         deadline=None)
    machine.TestCase().runTest()
