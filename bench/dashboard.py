"""Dashboard benchmark: every query the dashboard's pages run, on a ledger of 1,000,000
rows spread over 30 days, on SQLite and on PostgreSQL; and what the rollup trigger
(ledger/rollups.py) adds to `write_batch`, against the same rows without it.

    python bench/dashboard.py [--rows 1000000] [--reps 30] [--no-postgres]

PostgreSQL is started by tests/support/servers.py (loopback, fsync=off like the tests).
Writes bench/results/dashboard.md. Bounded: it stops after one pass over each backend."""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tallygate.core.catalog import Catalog
from tallygate.ledger import LedgerStore, open_ledger
from tallygate.reports import overview as ov
from tallygate.reports.runs import runs_report
from tallygate.types import CallRecord, Outcome

FEATURES = ["chat", "summarize", "code_review", "quick_answer", "search", "agent", "triage",
            "translate"]
MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "claude-sonnet-4-5", "claude-haiku-4-5", "o3"]
STEPS = [None, "planning", "execution", "review", "verification"]
PLANS = ["free", "pro", "enterprise"]
DAYS = 30
CHUNK = 5000


def make_rows(n: int, now: float, seed: int = 7) -> list[CallRecord]:
    rnd = random.Random(seed)
    runs = max(1, n // 50)
    start = now - DAYS * 86400
    out = []
    for i in range(n):
        run_no = rnd.randrange(runs)
        run_start = start + (run_no / runs) * DAYS * 86400
        ts = run_start + rnd.uniform(0, 3600)
        rejected = rnd.random() < 0.03
        inp = 0 if rejected else rnd.randint(200, 8000)
        out.append(CallRecord(
            request_id=f"b-{i:08d}", ts=min(ts, now - 1), status=429 if rejected else 200,
            outcome=Outcome.REJECTED if rejected else Outcome.OK,
            # a run is one user's (one agent session through one of their keys), as in life
            key_id=f"key_{run_no % 1000 % 200:04d}", user=f"user-{run_no % 1000}",
            plan=PLANS[run_no % 1000 % len(PLANS)], feature=rnd.choice(FEATURES),
            run=f"TICKET-{run_no}",
            step=rnd.choice(STEPS), step_attempt=rnd.randint(1, 4),
            model_requested="auto", model_used=None if rejected else rnd.choice(MODELS),
            input_tokens=inp, output_tokens=0 if rejected else rnd.randint(50, 1500),
            cached_tokens=0 if rejected else rnd.randint(0, inp // 4),
            cost_nusd=0 if rejected else rnd.randint(10_000, 40_000_000),
            latency_ms=rnd.randint(100, 5000),
            error_code="budget_exceeded" if rejected else None,
        ))
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]  # nearest rank


async def load(store: LedgerStore, rows: list[CallRecord]) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(rows), CHUNK):
        await store.write_batch(rows[i:i + CHUNK])
    return time.perf_counter() - t0


async def drop_trigger(store: LedgerStore) -> None:
    if store.dialect == "sqlite":
        await store._call(store._db().execute, "DROP TRIGGER calls_rollups")  # type: ignore[attr-defined]
        return
    async with store._conn() as conn:  # type: ignore[attr-defined]
        await conn.execute("DROP TRIGGER calls_rollups ON calls")


async def write_cost(url_with: str, url_without: str, rows: list[CallRecord]
                     ) -> tuple[float, float]:
    """µs per row through write_batch in batches of 200 (the writer's default), with and
    without the rollup trigger."""
    out = []
    for url, keep in ((url_without, False), (url_with, True)):
        store = await open_ledger(url)
        if not keep:
            await drop_trigger(store)
        t0 = time.perf_counter()
        for i in range(0, len(rows), 200):
            await store.write_batch(rows[i:i + 200])
        out.append((time.perf_counter() - t0) / len(rows) * 1e6)
        await store.close()
    return out[0], out[1]


Query = tuple[str, Callable[[LedgerStore, float], Awaitable[Any]]]


def queries(run_id: str) -> list[Query]:
    target = Catalog().get("gpt-4o-mini")
    qs: list[Query] = []
    for name, span in ov.SPANS.items():
        for by in ov.STACKS:
            qs.append((f"timeseries {name} by {by}",
                       lambda s, now, span=span, by=by: ov.timeseries(s, span, by, now=now)))
        qs.append((f"totals {name}", lambda s, now, span=span: ov.window_totals(s, span,
                                                                                now=now)))
    month, day = ov.SPANS["month"], ov.SPANS["day"]
    qs += [
        ("costliest runs 30 d", lambda s, now: ov.costliest_runs(s, month, now=now)),
        ("most looped runs 30 d", lambda s, now: ov.most_looped_runs(s, month, now=now)),
        ("costliest steps 30 d", lambda s, now: ov.names_in_window(s, month, "step", now=now)),
        ("spend by key 30 d", lambda s, now: ov.spend_by_key(s, month, now=now)),
        ("what-if step 30 d", lambda s, now: ov.what_if_window(s, target, month, now=now,
                                                               step="review")),
        ("what-if feature 1 d", lambda s, now: ov.what_if_window(s, target, day, now=now,
                                                                 feature="chat")),
        ("one run's steps", lambda s, now: runs_report(s, run=run_id)),
    ]
    return qs


async def measure(store: LedgerStore, now: float, reps: int, run_id: str
                  ) -> list[tuple[str, float, float]]:
    out = []
    for name, q in queries(run_id):
        await q(store, now)  # warm the page cache once
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            await q(store, now)
            samples.append((time.perf_counter() - t0) * 1000)
        out.append((name, statistics.median(samples), pct(samples, 95)))
    return out


RAW_30D = """SELECT CAST(ts / 86400 AS INTEGER), "user", SUM(input_tokens + output_tokens),
SUM(cost_nusd) FROM calls WHERE ts >= ? GROUP BY 1, 2"""


async def raw_floor(store: LedgerStore, now: float) -> float:
    """The 30-day series by user summed from the raw rows (what the rollups spare), ms."""
    sql = RAW_30D if store.dialect == "sqlite" else RAW_30D.replace(
        "CAST(ts / 86400 AS INTEGER)", "floor(ts / 86400)::bigint")
    t0 = time.perf_counter()
    await store.query(sql, [now - DAYS * 86400])
    return (time.perf_counter() - t0) * 1000


async def one_backend(label: str, url: str, write_urls: tuple[str, str],
                      rows: list[CallRecord], sample: list[CallRecord], now: float,
                      reps: int) -> dict[str, Any]:
    without, with_trigger = await write_cost(write_urls[1], write_urls[0], sample)
    store = await open_ledger(url)
    try:
        load_s = await load(store, rows)
        results = await measure(store, now, reps, rows[len(rows) // 2].run or "")
        raw = await raw_floor(store, now)
        rollup_rows = tuple([(await store.query(f"SELECT COUNT(*) FROM {t}"))[0][0]
                             for t in ("rollup_hour", "rollup_day", "rollup_ids",
                                       "rollup_ids_hour", "rollup_runs")])
    finally:
        await store.close()
    return {"label": label, "write": (without, with_trigger), "load_s": load_s,
            "results": results, "raw_ms": raw, "rollup_rows": rollup_rows}


def report(runs: list[dict[str, Any]], args: argparse.Namespace, n: int) -> str:
    lines = [
        "# Dashboard queries on a ledger of 1,000,000 rows (issue 18)",
        "",
        f"Command: `. .venv/bin/activate && python bench/dashboard.py --rows {n} "
        f"--reps {args.reps}{' --no-postgres' if args.no_postgres else ''}` (from the repo "
        "root).",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, PostgreSQL on loopback started by "
        "tests/support/servers.py (fsync=off, synchronous_commit=off, like the tests). "
        "Shared 2-core machine: medians and ratios of the same run.",
        "",
        f"The ledger: {n:,} calls over {DAYS} days ending now, 8 features, 6 models, 5 steps, "
        f"3 plans, 1,000 users, 200 keys, {n // 50:,} runs (each one user's, within an "
        "hour), 3% refused. "
        f"Each query ran {args.reps} times after one warm-up; p50 / p95 in ms.",
        "",
    ]
    head = "| query | " + " | ".join(f"{r['label']} p50 | {r['label']} p95" for r in runs) + " |"
    lines += [head, "|---|" + "---|---|" * len(runs)]
    for i, (name, *_rest) in enumerate(runs[0]["results"]):
        cells = " | ".join(f"{r['results'][i][1]:.1f} | {r['results'][i][2]:.1f}" for r in runs)
        lines.append(f"| {name} | {cells} |")
    worst = {r["label"]: max(x[2] for x in r["results"]) for r in runs}
    lines += ["", "Slowest p95: " + ", ".join(f"{k} {v:.1f} ms" for k, v in worst.items())
              + " (target: every query < 300 ms p95).", ""]
    for r in runs:
        without, with_trigger = r["write"]
        lines.append(
            f"- {r['label']}: the 30-day series by user summed from the raw rows instead "
            f"takes {r['raw_ms']:.0f} ms (once); the rollups hold {r['rollup_rows'][0]:,} "
            f"hourly, {r['rollup_rows'][1]:,} daily, {r['rollup_rows'][2]:,} daily per-id"
            f", {r['rollup_rows'][3]:,} hourly per-id and {r['rollup_rows'][4]:,} daily "
            f"per-run rows. Loading the {n:,} rows "
            f"(batches of {CHUNK:,}) took {r['load_s']:.0f} s. `write_batch` in batches of "
            f"200 rows: {with_trigger:.1f} µs a row with the rollup trigger, {without:.1f} "
            f"µs without it (floor, same run, {args.sample:,} rows): "
            f"{with_trigger / without:.2f}×.")
    lines += [
        "- Minute buckets (the last hour) read the raw rows of that window through the `ts` "
        "index; everything else reads `rollup_hour` / `rollup_ids_hour` (a day), `rollup_day`"
        " / `rollup_ids` (30 days; docs/ledger.md).",
    ]
    return "\n".join(lines) + "\n"


async def main(args: argparse.Namespace) -> None:
    now = time.time()
    rows = make_rows(args.rows, now)
    sample = make_rows(args.sample, now, seed=11)
    for r in sample:
        r.request_id = "w" + r.request_id
    tmp = Path(tempfile.mkdtemp(prefix="tg-bench-dash-"))
    runs = []
    with ExitStack() as stack:
        urls = {"SQLite": (f"sqlite:///{tmp}/ledger.db",
                           (f"sqlite:///{tmp}/w1.db", f"sqlite:///{tmp}/w0.db"))}
        if not args.no_postgres:
            from tests.support.ledgers import fresh_postgres
            from tests.support.servers import postgres_server

            server = stack.enter_context(postgres_server())
            urls["PostgreSQL"] = tuple([stack.enter_context(fresh_postgres(server.url)),  # type: ignore[assignment]
                                        (stack.enter_context(fresh_postgres(server.url)),
                                         stack.enter_context(fresh_postgres(server.url)))])
        for label, (url, write_urls) in urls.items():
            print(f"{label}: loading {len(rows):,} rows …", flush=True)
            runs.append(await one_backend(label, url, write_urls, rows, sample, now,
                                          args.reps))
    text = report(runs, args, args.rows)
    save(text)
    print(text)


def save(text: str) -> None:
    (Path(__file__).resolve().parent / "results" / "dashboard.md").write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--sample", type=int, default=50_000,
                        help="rows written with and without the trigger")
    parser.add_argument("--no-postgres", action="store_true")
    asyncio.run(main(parser.parse_args()))
