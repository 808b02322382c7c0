"""The rollup tables (ledger/rollups.py) equal the raw sums of `calls` on SQLite and a real
PostgreSQL server: after small batches, large ones (PostgreSQL's COPY path), replays of
rows already stored, and for rows stored before the migration (the backfill)."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing

import pytest

from tallygate.ledger import LedgerStore, open_ledger, sqlite_path
from tallygate.ledger.rollups import HOUR_SUMS, IDS_SUMS
from tallygate.types import CallRecord, Outcome
from tests.support.ledgers import fresh_ledger_url

T0 = 1_790_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path) -> AsyncIterator[str]:
    with fresh_ledger_url(request.param, tmp_path, request) as url:
        yield url


def random_rows(n: int, seed: int) -> list[CallRecord]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        outcome = rnd.choice(list(Outcome))
        inp = rnd.randint(0, 5000)
        cached = rnd.randint(0, min(50, inp))  # subsets of the input, as providers report
        out.append(CallRecord(
            request_id=f"r{seed}-{i}", ts=T0 + rnd.uniform(0, 3 * 86400), outcome=outcome,
            status=429 if outcome is Outcome.REJECTED else 200,
            key_id=rnd.choice([None, "key_a", "key_b"]), user=rnd.choice([None, "u1", "u2"]),
            plan=rnd.choice([None, "free", "pro"]), feature=rnd.choice([None, "chat", "code"]),
            run=rnd.choice([None, "T-1", "T-2", "T-3"]), step=rnd.choice([None, "plan", "rev"]),
            step_attempt=rnd.choice([None, 1, 2, 5]),
            model_requested=rnd.choice([None, "gpt-4o"]),
            model_used=rnd.choice([None, "gpt-4o", "gpt-4o-mini"]),
            input_tokens=inp, output_tokens=rnd.randint(0, 900),
            cached_tokens=cached, cache_write_tokens=rnd.randint(0, min(9, inp - cached)),
            reasoning_tokens=rnd.randint(0, 9), exact=rnd.random() < 0.7,
            cost_nusd=rnd.randint(0, 10**9),
            error_code=rnd.choice([None, "budget_exceeded", "rate_limited"]),
            tokens_saved=rnd.randint(0, 9), trimmed_tokens=rnd.randint(0, 9),
        ))
    return out


HOUR_RAW = """
SELECT {hour}, COALESCE(feature, ''), COALESCE(model_used, model_requested, ''),
  COALESCE(step, ''), COALESCE(plan, ''), outcome,
  CASE WHEN outcome IN ('rejected', 'error') THEN COALESCE(error_code, '') ELSE '' END,
  COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(cache_write_tokens),
  SUM(reasoning_tokens), SUM(cost_nusd), SUM(trimmed_tokens), SUM(tokens_saved),
  SUM(CASE WHEN exact THEN 0 ELSE 1 END)
FROM calls GROUP BY 1, 2, 3, 4, 5, 6, 7"""

DAY_RAW = """
SELECT {day}, COALESCE({col}, ''), COUNT(*), SUM(input_tokens), SUM(output_tokens),
  SUM(cost_nusd), SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END), MAX(step_attempt),
  MIN(ts), MAX(ts)
FROM calls {where} GROUP BY 1, 2"""


def _floor(store: LedgerStore, width: int) -> str:
    if store.dialect == "sqlite":
        return f"CAST(ts / {width} AS INTEGER)"
    return f"floor(ts / {width})::bigint"


def _norm(rows: list[tuple]) -> list[tuple]:
    """Sums come back as int (SQLite) or Decimal (PostgreSQL): compare as int."""
    from decimal import Decimal

    return sorted(tuple(int(v) if isinstance(v, Decimal) else v for v in r) for r in rows)


async def assert_rollups_match(store: LedgerStore) -> None:
    for table, col, width in (("rollup_hour", "hour", 3600), ("rollup_day", "day", 86400)):
        raw = await store.query(HOUR_RAW.format(hour=_floor(store, width)))
        rolled = await store.query(
            f"SELECT {col}, feature, model, step, plan, outcome, reason, "
            f"{', '.join(HOUR_SUMS)} FROM {table}")
        assert _norm(rolled) == _norm(raw), table
    for table, col_b, width, dims in (("rollup_ids", "day", 86400, ("user", "key")),
                                      ("rollup_ids_hour", "hour", 3600, ("user", "key"))):
        for dim in dims:
            col = {"user": '"user"', "key": "key_id", "run": "run"}[dim]
            where = "WHERE run IS NOT NULL" if dim == "run" else ""
            raw = await store.query(DAY_RAW.format(day=_floor(store, width), col=col,
                                                   where=where))
            rolled = await store.query(
                f"SELECT {col_b}, value, {', '.join(IDS_SUMS)}, max_attempt, first_ts, "
                f"last_ts FROM {table} WHERE dim = ?", [dim])
            assert _norm(rolled) == _norm(raw), (table, dim)
    # Runs per owner, as their budgets are scoped (the user, else the key, else '-').
    owner = ("CASE WHEN \"user\" IS NOT NULL THEN 'user.' || \"user\" "
             "WHEN key_id IS NOT NULL THEN 'key.' || key_id ELSE '-' END")
    raw = await store.query(
        f"SELECT {_floor(store, 86400)}, {owner}, run, COUNT(*), SUM(input_tokens), "
        "SUM(output_tokens), SUM(cost_nusd), SUM(CASE WHEN outcome = 'rejected' THEN 1 "
        "ELSE 0 END), MAX(step_attempt), MIN(ts), MAX(ts) FROM calls WHERE run IS NOT NULL "
        "GROUP BY 1, 2, 3")
    rolled = await store.query(f"SELECT day, owner, run, {', '.join(IDS_SUMS)}, max_attempt, "
                               "first_ts, last_ts FROM rollup_runs")
    assert raw and _norm(rolled) == _norm(raw), "rollup_runs"
    assert await store.query("SELECT COUNT(*) FROM rollup_ids WHERE dim = 'run'") == [(0,)]


async def test_rollups_follow_every_insert(ledger_url) -> None:
    store = await open_ledger(ledger_url)
    try:
        rows = random_rows(1500, 1)
        for i in range(0, 300, 7):  # many small batches
            await store.write_batch(rows[i:i + 7])
        await store.write_batch(rows[300:])  # one large batch (COPY on PostgreSQL)
        await store.write_batch(rows[:50] + rows[1000:1100])  # replays: counted once
        assert await store.count() == 1500
        await assert_rollups_match(store)
    finally:
        await store.close()


async def test_rows_stored_before_the_migration_are_backfilled(ledger_url) -> None:
    store = await open_ledger(ledger_url)
    drop_trigger = ("DROP TRIGGER calls_rollups" if store.dialect == "sqlite"
                    else "DROP TRIGGER calls_rollups ON calls")
    try:
        # Back to a ledger before the rollups' migration: no rollups, no trigger.
        for sql in (drop_trigger, "DROP TABLE rollup_hour", "DROP TABLE rollup_day",
                    "DROP TABLE rollup_ids", "DROP TABLE rollup_ids_hour",
                    "DROP TABLE rollup_runs", "DELETE FROM schema_version WHERE version >= 3"):
            await _execute(ledger_url, sql)
        assert await store.schema_version() == 2  # the store sees the rewound schema
        await store.write_batch(random_rows(800, 2))
    finally:
        await store.close()
    store = await open_ledger(ledger_url)  # migrations 3 and 4 run again: backfill + trigger
    try:
        assert await store.schema_version() == 4
        await store.write_batch(random_rows(40, 3))
        await assert_rollups_match(store)
    finally:
        await store.close()


async def test_runs_rolled_up_by_name_alone_are_rebuilt_per_owner(ledger_url) -> None:
    """A ledger at migration 3 (runs in rollup_ids by name, its trigger writing them) moves
    to migration 4: every old call's run is read per owner from rollup_runs."""
    from tallygate.ledger import rollups

    store = await open_ledger(ledger_url)
    try:
        v3_trigger = rollups.statements(store.dialect)[-1 if store.dialect == "sqlite" else -3:]
        drop_trigger = ("DROP TRIGGER calls_rollups" if store.dialect == "sqlite"
                        else "DROP TRIGGER calls_rollups ON calls")
        for sql in (drop_trigger, "DROP TABLE rollup_runs", *v3_trigger,
                    "DELETE FROM schema_version WHERE version = 4"):
            await _execute(ledger_url, sql)
        assert await store.schema_version() == 3
        await store.write_batch(random_rows(600, 4))  # rolled up the migration-3 way
        named = await store.query("SELECT COUNT(*) FROM rollup_ids WHERE dim = 'run'")
        assert named[0][0] > 0
    finally:
        await store.close()
    store = await open_ledger(ledger_url)
    try:
        assert await store.schema_version() == 4
        await store.write_batch(random_rows(40, 6))
        await assert_rollups_match(store)
    finally:
        await store.close()


async def _execute(url: str, sql: str) -> None:
    """DDL outside the read-only query() contract (the test rewinds the schema), run as
    another client of the same ledger would: its own connection to the file or server."""
    path = sqlite_path(url)
    if path is not None:
        with closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute(sql)
        return
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql)


# ---------------------------------------------------------------- the dashboard's reads


def _expected_series(rows: list[CallRecord], span, by: str, now: float) -> dict:
    from tallygate.reports.overview import NONE

    first, end = span.bounds(now)
    attr = {"key": "key_id", "model": None}.get(by, by)
    out: dict[str, list[int]] = {}
    for r in rows:
        b = int(r.ts // span.bucket)
        if not first <= b < end:
            continue
        name = (r.model_used or r.model_requested) if attr is None else getattr(r, attr)
        out.setdefault(name or NONE, [0] * span.buckets)[b - first] += (
            r.input_tokens + r.output_tokens)
    return out


async def test_timeseries_and_totals_equal_the_raw_rows(ledger_url) -> None:
    from tallygate.reports.overview import SPANS, STACKS, timeseries, window_totals

    store = await open_ledger(ledger_url)
    try:
        rows = random_rows(3000, 4)
        await store.write_batch(rows)
        now = T0 + 2.5 * 86400
        for span in SPANS.values():
            for by in STACKS:
                got = await timeseries(store, span, by, now=now, top=100)
                assert got.tokens == {k: v for k, v in
                                      _expected_series(rows, span, by, now).items()
                                      if any(v)} | {k: v for k, v in got.tokens.items()
                                                    if not any(v)}, (span.name, by)
            first, end = span.bounds(now)
            # the rollups are hourly: minute windows read rows, others whole hours
            lo = first * span.bucket
            inside = [r for r in rows if lo <= r.ts < end * span.bucket]
            totals = await window_totals(store, span, now=now)
            assert totals.calls == len(inside), span.name
            assert totals.cost_nusd == sum(r.cost_nusd for r in inside)
            assert totals.rejected == sum(r.outcome is Outcome.REJECTED for r in inside)
            assert sum(totals.refusals.values()) == totals.rejected
    finally:
        await store.close()


async def test_runs_keys_and_what_if_from_the_rollups(ledger_url) -> None:
    from tallygate.core.catalog import Catalog
    from tallygate.reports.overview import (
        SPANS,
        costliest_runs,
        most_looped_runs,
        spend_by_key,
        what_if_window,
    )
    from tallygate.reports.runs import what_if

    store = await open_ledger(ledger_url)
    try:
        rows = random_rows(2000, 5)
        await store.write_batch(rows)
        month, now = SPANS["month"], T0 + 3 * 86400
        runs = await costliest_runs(store, month, now=now)
        cost: dict[tuple[str, str], int] = {}
        for r in rows:
            if r.run:
                owner = f"user.{r.user}" if r.user else f"key.{r.key_id}" if r.key_id else "-"
                cost[r.run, owner] = cost.get((r.run, owner), 0) + r.cost_nusd
        assert len(cost) > 3  # the same run ids under several owners: one row each
        assert [((r.run, r.owner), r.cost_nusd) for r in runs] == sorted(
            cost.items(), key=lambda kv: -kv[1])
        looped = await most_looped_runs(store, month, now=now)
        assert looped and all(r.max_attempt == 5 for r in looped)
        keys = await spend_by_key(store, month, now=now)
        assert keys["key_a"].cost_nusd == sum(r.cost_nusd for r in rows if r.key_id == "key_a")
        assert keys[None].calls == sum(1 for r in rows if r.key_id is None)
        target = Catalog().get("gpt-4o-mini")
        for kw in ({"step": "rev"}, {"feature": "chat"}):
            rolled = await what_if_window(store, target, month, now=now, **kw)
            exact = await what_if(store, kw.get("step"), target, feature=kw.get("feature"),
                                  since=rolled.since, until=rolled.until)
            assert rolled.current_nusd == exact.current_nusd
            calls = sum(g.calls for g in exact.groups)
            assert exact.what_if_nusd - calls <= rolled.what_if_nusd <= exact.what_if_nusd
    finally:
        await store.close()


async def test_timeseries_keeps_the_top_names_and_sums_the_rest(ledger_url) -> None:
    from tallygate.reports.overview import OTHER, SPANS, timeseries

    store = await open_ledger(ledger_url)
    try:
        rows = random_rows(3000, 6)
        await store.write_batch(rows)
        now = T0 + 2.5 * 86400
        for span in SPANS.values():
            for by in ("user", "model", "key"):
                full = await timeseries(store, span, by, now=now, top=100)
                cut = await timeseries(store, span, by, now=now, top=1)
                biggest = max(full.tokens, key=lambda k: sum(full.tokens[k]))
                assert set(cut.tokens) <= {biggest, OTHER}
                assert cut.tokens[biggest] == full.tokens[biggest]
                per_bucket = [sum(v[i] for v in full.tokens.values())
                              for i in range(span.buckets)]
                assert [sum(v[i] for v in cut.tokens.values())
                        for i in range(span.buckets)] == per_bucket, (span.name, by)
                assert sum(map(sum, cut.cost_nusd.values())) == sum(
                    map(sum, full.cost_nusd.values()))
    finally:
        await store.close()
