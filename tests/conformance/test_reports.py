"""Every report against numbers computed by hand (in the comments) on one fixed ledger,
on SQLite and on a real PostgreSQL server (the SQL differs per dialect)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import orjson
import pytest

from tallygate.ledger import LedgerStore, open_ledger
from tallygate.reports.runs import (
    runs_from_json,
    runs_json,
    runs_report,
    what_if,
    what_if_from_json,
    what_if_json,
)
from tallygate.reports.usage import dumps, usage_json, usage_report
from tallygate.types import ModelInfo
from tallygate.units import parse_when, usd_display, usd_text
from tests.support.ledgers import fresh_ledger_url
from tests.support.rows import DAY2, ROWS, SHARED, T0


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger(request, tmp_path) -> AsyncIterator[LedgerStore]:
    with fresh_ledger_url(request.param, tmp_path, request) as url:
        store = await open_ledger(url)
        await store.write_batch(ROWS)
        try:
            yield store
        finally:
            await store.close()


def _by_key(report):
    return {r.key: r for r in report.rows}


async def test_by_feature(ledger) -> None:
    rep = await usage_report(ledger, "feature")
    assert [r.key for r in rep.rows] == ["code", "chat", "summarize"]  # cost desc
    chat, summ, code = _by_key(rep)["chat"], _by_key(rep)["summarize"], _by_key(rep)["code"]
    assert (chat.calls, chat.input_tokens, chat.output_tokens, chat.total_tokens) == (
        4, 1500, 300, 1800)
    assert (chat.cached_tokens, chat.cost_nusd, chat.rejected, chat.trimmed) == (400, 7500, 1, 1)
    assert (chat.trimmed_tokens, chat.cache_hits, chat.tokens_saved, chat.errors) == (
        250, 1, 1200, 0)
    # non-rejected latencies 5, 100, 300: p50 = 2nd, p95 = 3rd
    assert (chat.p50_latency_ms, chat.p95_latency_ms) == (100, 300)
    assert (summ.calls, summ.total_tokens, summ.cost_nusd, summ.estimated) == (1, 2100, 360, 1)
    assert (summ.p50_latency_ms, summ.p95_latency_ms) == (200, 200)
    assert (code.calls, code.input_tokens, code.output_tokens, code.total_tokens) == (
        10, 24300, 4750, 29050)
    assert (code.cost_nusd, code.cached_tokens) == (273600, 1000)
    # sorted 300 400 600 620 650 700 800 1000 1500 2000: p50 = 5th, p95 = 10th
    assert (code.p50_latency_ms, code.p95_latency_ms) == (650, 2000)
    t = rep.total
    assert (t.calls, t.input_tokens, t.output_tokens, t.cost_nusd) == (15, 27800, 5150, 281460)
    # 14 non-rejected latencies: 7th = 600, 14th = 2000
    assert (t.p50_latency_ms, t.p95_latency_ms) == (600, 2000)


async def test_by_user_with_null_key(ledger) -> None:
    rep = await usage_report(ledger, "user")
    assert [r.key for r in rep.rows] == ["dave", None, "alice", "bob", "carol"]
    rows = _by_key(rep)
    assert (rows["dave"].calls, rows["dave"].input_tokens, rows["dave"].output_tokens,
            rows["dave"].cost_nusd) == (5, 18500, 3900, 205000)
    assert (rows[None].calls, rows[None].input_tokens, rows[None].output_tokens,
            rows[None].cost_nusd) == (5, 5800, 850, 68600)
    assert (rows[None].p50_latency_ms, rows[None].p95_latency_ms) == (620, 1000)
    alice = rows["alice"]
    assert (alice.calls, alice.cost_nusd, alice.cache_hits, alice.tokens_saved) == (
        2, 5000, 1, 1200)
    assert (alice.p50_latency_ms, alice.p95_latency_ms) == (5, 100)
    bob = rows["bob"]
    assert (bob.calls, bob.rejected, bob.trimmed, bob.p50_latency_ms) == (2, 1, 1, 300)


async def test_by_model_counts_rejections_under_the_requested_model(ledger) -> None:
    rep = await usage_report(ledger, "model")
    assert [(r.key, r.calls, r.cost_nusd) for r in rep.rows] == [
        ("opus", 2, 172500), ("sonnet", 6, 96900), ("gpt-4o", 4, 7500),
        ("haiku", 2, 4200), ("gpt-4o-mini", 1, 360),
    ]
    sonnet = _by_key(rep)["sonnet"]
    assert (sonnet.input_tokens, sonnet.output_tokens) == (16800, 3100)
    assert _by_key(rep)["gpt-4o"].rejected == 1


async def test_by_run_step_and_day(ledger) -> None:
    runs = await usage_report(ledger, "run")
    assert [(r.key, r.calls, r.cost_nusd) for r in runs.rows] == [
        ("R1", 5, 205000), ("R2", 5, 68600), (None, 5, 7860)]
    steps = await usage_report(ledger, "step")
    assert [(r.key, r.calls, r.cost_nusd, r.total_tokens) for r in steps.rows] == [
        ("planning", 2, 172500, 5500), ("review", 5, 51900, 12900),
        ("execution", 1, 45000, 7000), (None, 5, 7860, 3900), ("verification", 2, 4200, 3650),
    ]
    days = await usage_report(ledger, "day")
    assert [(r.key, r.calls, r.cost_nusd) for r in days.rows] == [
        ("2026-11-01", 5, 7860), ("2026-11-02", 10, 273600)]


async def test_since_until_filter(ledger) -> None:
    rep = await usage_report(ledger, "feature", since=DAY2)
    assert [(r.key, r.calls) for r in rep.rows] == [("code", 10)]
    rep = await usage_report(ledger, "feature", until=T0 + 2 * 3600)  # r1, r2 only
    assert [(r.key, r.calls, r.cost_nusd) for r in rep.rows] == [("chat", 2, 7500)]
    empty = await usage_report(ledger, "feature", since=DAY2 + 86400)
    assert empty.rows == [] and empty.total.calls == 0


async def test_runs_report_with_loops(ledger) -> None:
    rep = await runs_report(ledger)
    assert [r.run for r in rep.runs] == ["R1", "R2"]
    r1, r2 = rep.runs
    assert [(s.step, s.attempts, s.cost_nusd) for s in r1.steps] == [
        ("planning", 1, 120000), ("execution", 1, 45000), ("review", 2, 37500),
        ("verification", 1, 2500)]
    review = r1.steps[2]
    assert [(lp.attempt, lp.calls, lp.input_tokens, lp.output_tokens, lp.total_tokens,
             lp.cost_nusd) for lp in review.loops] == [
        (1, 1, 4000, 500, 4500, 19500), (2, 1, 4500, 300, 4800, 18000)]
    assert (r1.calls, r1.total_tokens, r1.cost_nusd, r1.extra_loops) == (5, 22400, 205000, 1)
    assert [(s.step, s.attempts, s.cost_nusd) for s in r2.steps] == [
        ("planning", 1, 52500), ("review", 3, 14400), ("verification", 1, 1700)]
    assert [lp.total_tokens for lp in r2.steps[1].loops] == [1100, 1200, 1300]
    assert (r2.total_tokens, r2.cost_nusd, r2.extra_loops) == (6650, 68600, 2)
    assert [(s.step, s.runs, s.calls, s.attempts, s.max_attempts, s.total_tokens, s.cost_nusd)
            for s in rep.costliest_steps] == [
        ("planning", 2, 2, 2, 1, 5500, 172500), ("review", 2, 5, 5, 3, 12900, 51900),
        ("execution", 1, 1, 1, 1, 7000, 45000), ("verification", 2, 2, 2, 1, 3650, 4200)]
    assert [(r.run, r.extra_loops) for r in rep.most_loops] == [("R2", 2), ("R1", 1)]
    only = await runs_report(ledger, run="R2")
    assert [r.run for r in only.runs] == ["R2"]
    data = orjson.loads(dumps(runs_json(rep)))
    assert data["runs"][0]["steps"][2]["loops"][1]["cost_usd"] == 0.000018
    assert data["most_loops"][0] == {"run": "R2", "owner": "-", "extra_loops": 2,
                                     "cost_nusd": 68600, "cost_usd": 0.0000686}
    assert [(r["run"], r["owner"]) for r in data["runs"]] == [("R1", "user.dave"), ("R2", "-")]


async def test_a_run_id_shared_by_owners_is_one_run_each(ledger) -> None:
    """A run belongs to its caller, as its budgets do: every runs view splits by owner."""
    await ledger.write_batch(SHARED)
    rep = await runs_report(ledger, run="shared-id")
    assert [(r.owner, r.calls, r.total_tokens, r.cost_nusd, r.extra_loops)
            for r in rep.runs] == [("user.alice", 2, 40, 300, 1), ("user.bob", 1, 305, 3000, 0),
                                   ("key.k_svc", 1, 4005, 40000, 0)]
    assert [(r.run, r.owner) for r in rep.most_loops] == [("shared-id", "user.alice")]
    bob = await runs_report(ledger, run="shared-id", owner="user.bob")
    assert [(r.owner, r.calls) for r in bob.runs] == [("user.bob", 1)]
    assert runs_from_json(orjson.loads(dumps(runs_json(rep)))) == rep
    by_run = await usage_report(ledger, "run", since=DAY2 + 3600)
    assert [(r.key, r.owner, r.calls, r.total_tokens) for r in by_run.rows] == [
        ("shared-id", "key.k_svc", 1, 4005), ("shared-id", "user.bob", 1, 305),
        ("shared-id", "user.alice", 2, 40)]
    everything = await usage_report(ledger, "run")
    assert [(r.key, r.owner) for r in everything.rows if r.key != "shared-id"] == [
        ("R1", "user.dave"), ("R2", "-"), (None, None)]  # calls without a run: one row
    data = orjson.loads(dumps(usage_json(by_run)))
    assert data["rows"][1]["owner"] == "user.bob"
    assert all(r.owner is None for r in (await usage_report(ledger, "user")).rows)  # run only


SMALL = ModelInfo(name="small-model", provider="x", context_window=100000,
                  max_output_tokens=8000, encoding="o200k_base",
                  input_nusd_per_mtok=1_000_000, output_nusd_per_mtok=5_000_003,
                  cached_input_nusd_per_mtok=100_000)
SONNET = ModelInfo(name="sonnet", provider="anthropic", context_window=200000,
                   max_output_tokens=8000, encoding=None)


async def test_what_if_reprices_step_exactly(ledger) -> None:
    w = await what_if(ledger, "review", SMALL,
                      lookup=lambda name: SONNET if name == "sonnet" else None)
    # per call, ceil((plain*1e6 + cached*1e5 + out*5000003) / 1e6):
    # r8 3000,1000,500 → 5601; r9 → 6001; r12 → 1501; r13 → 1601; r14 → 1701
    assert (w.current_nusd, w.what_if_nusd, w.saving_nusd) == (51900, 16405, 35495)
    assert len(w.groups) == 1
    g = w.groups[0]
    assert (g.model, g.calls, g.input_tokens, g.output_tokens, g.cached_tokens) == (
        "sonnet", 5, 11800, 1100, 1000)
    assert any("kept as recorded" in n for n in w.notes)
    assert any("sonnet counts with an undisclosed tokenizer" in n for n in w.notes)
    data = orjson.loads(dumps(what_if_json(w)))
    assert data["saving_nusd"] == 35495 and data["saving_usd"] == 0.000035495
    since = await what_if(ledger, "review", SMALL, since=DAY2 + 6 * 60)  # R2's review only
    assert (since.current_nusd, since.what_if_nusd) == (14400, 4803)


async def test_runs_and_what_if_come_back_from_their_json(ledger) -> None:
    """What `report runs --url` / `what-if --url` render is what the ledger gave."""
    rep = await runs_report(ledger, since=T0)
    assert runs_from_json(orjson.loads(dumps(runs_json(rep)))) == rep
    w = await what_if(ledger, "review", SMALL, since=T0,
                      lookup=lambda name: SONNET if name == "sonnet" else None)
    assert what_if_from_json(orjson.loads(dumps(what_if_json(w)))) == w


async def test_json_shape(ledger) -> None:
    rep = await usage_report(ledger, "feature", since=T0)
    raw = dumps(usage_json(rep))
    assert b'"cost_usd": 0.0002736' in raw  # exact decimal text, not a float repr
    data = orjson.loads(raw)
    assert data["by"] == "feature" and data["since"] == "2026-11-01T00:00:00Z"
    assert data["until"] is None
    first = data["rows"][0]
    for k in ("key", "calls", "input_tokens", "output_tokens", "total_tokens", "cost_usd",
              "cost_nusd", "rejected", "trimmed", "cache_hits", "tokens_saved", "errors",
              "p50_latency_ms", "p95_latency_ms"):
        assert k in first
    assert first["key"] == "code" and first["cost_nusd"] == 273600
    assert data["total"]["calls"] == 15


def test_money_and_time_helpers() -> None:
    assert usd_text(0) == "0"
    assert usd_text(1234) == "0.000001234"
    assert usd_text(12_500_000_000) == "12.5"
    assert usd_text(-5) == "-0.000000005"
    assert usd_display(1_234_567) == "$0.001235"
    assert Decimal(usd_text(281460)) == Decimal("0.00028146")
    now = T0 + 10 * 86400
    assert parse_when("24h", now) == now - 86400
    assert parse_when("7d", now) == now - 7 * 86400
    assert parse_when("30m", now) == now - 1800
    assert parse_when("2026-11-01", now) == T0
    assert parse_when("2026-11-01T06:00", now) == T0 + 6 * 3600
    assert parse_when("2026-11-01T06:00:00+01:00", now) == T0 + 5 * 3600
    from tallygate.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="bad time"):
        parse_when("yesterday-ish", now)


async def test_unknown_dimension_is_a_clear_error(ledger) -> None:
    from tallygate.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="cannot report by 'colour'"):
        await usage_report(ledger, "colour")
