"""Ledger benchmark: the cost of LedgerWriter.record() on the request path (journal append
included) and the sustained insert rate into SQLite and PostgreSQL.

    python bench/ledger.py [--rows 50000] [--no-postgres]

PostgreSQL is started by tests/support/servers.py (loopback, fsync=off like the tests)."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tallygate.ledger import LedgerWriter, open_ledger
from tallygate.types import CallRecord, Outcome


def make_row(i: int) -> CallRecord:
    return CallRecord(
        request_id=f"req-{i:08d}-{os.getpid()}", ts=time.time(), outcome=Outcome.OK,
        status=200, key_id="key_123", user=f"user-{i % 500}", plan="pro", feature="chat",
        run=f"run-{i % 50}", step="execution", step_attempt=1, provider="openai",
        model_requested="gpt-4o", model_used="gpt-4o-2024-08-06", input_tokens=1200 + i % 300,
        output_tokens=250, cached_tokens=512, cost_nusd=5_500_000, latency_ms=420, ttft_ms=180,
        detail='{"clamped_max_tokens": 1000}',
    )


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]  # nearest rank


async def record_cost(url: str, journal: Path | None, n: int, fsync: str) -> tuple[float, float]:
    """µs per record() call, p50/p99, with the background writer running."""
    store = await open_ledger(url)
    writer = LedgerWriter(store, journal_dir=journal, fsync=fsync)
    await writer.start()
    samples: list[float] = []
    for i in range(n):
        row = make_row(i)
        t0 = time.perf_counter_ns()
        writer.record(row)
        samples.append((time.perf_counter_ns() - t0) / 1000)
        if i % 100 == 99:
            await asyncio.sleep(0)  # let the writer run, as a server's loop would
    await writer.close()
    await store.close()
    return statistics.median(samples), pct(samples, 99)


async def sustained(url: str, journal: Path | None, n: int) -> float:
    """Rows/s from the first record() until the last row is committed."""
    store = await open_ledger(url)
    writer = LedgerWriter(store, journal_dir=journal)
    await writer.start()
    rows = [make_row(i) for i in range(n)]
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        writer.record(row)
        if i % 200 == 199:
            await asyncio.sleep(0)
    await writer.flush()
    elapsed = time.perf_counter() - t0
    assert await store.count() >= n
    await writer.close()
    await store.close()
    return n / elapsed


async def run(args: argparse.Namespace) -> list[str]:
    lines = ["| backend | journal fsync | record() p50 µs | record() p99 µs | sustained rows/s |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="tg-bench-ledger-") as tmp:
        d = Path(tmp)
        for fsync, n in (("never", args.rows), ("batch", args.rows), ("always", 2000)):
            url = f"sqlite:///{d / f'rc-{fsync}.db'}"
            p50, p99 = await record_cost(url, d / f"j-{fsync}", n, fsync)
            rate = await sustained(f"sqlite:///{d / f'sus-{fsync}.db'}", d / f"js-{fsync}",
                                   args.rows) if fsync == "never" else None
            lines.append(f"| sqlite | {fsync} | {p50:.1f} | {p99:.1f} | "
                         f"{f'{rate:,.0f}' if rate else '-'} |")
        p50, p99 = await record_cost("memory://", None, args.rows, "never")
        lines.append(f"| memory (no journal) | - | {p50:.1f} | {p99:.1f} | - |")
        if args.postgres:
            from tests.support.servers import postgres_server

            with postgres_server() as pg:
                p50, p99 = await record_cost(pg.url, d / "j-pg", args.rows, "never")
                rate = await sustained(pg.url, d / "js-pg", args.rows)
                lines.append(f"| postgresql 15 (loopback) | never | {p50:.1f} | {p99:.1f} | "
                             f"{rate:,.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--no-postgres", dest="postgres", action="store_false")
    args = parser.parse_args()
    lines = asyncio.run(run(args))
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
