"""What a streamed reservation's growth costs: StateStore.extend() per state store, beside
reserve() measured in the same run (its floor). Each simulated stream reserves its input
plus a first slice on two limits, extends by a slice 16 times, then settles. One task,
then 16 streams at once. Redis round trips per extend come from INFO commandstats.

Run: python bench/extend.py [--seconds 2] [--out bench/results/extend.md]"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.state_backends import on_every_state_store, run_from_command_line

from tallygate.state import StateStore, from_url
from tallygate.types import Hold, Window

NOW = 1_718_000_000.0
SLICE = {"tokens": 512}
EXTENSIONS = 16
_IDS = iter(range(10**12))
HOLDS = [Hold("global:tokens:minute", 1_024, 10**15, Window.MINUTE),
         Hold("run:user.u1:r1:tokens:run", 1_024, 10**15, Window.RUN)]


async def _streams(store: StateStore, tasks: int, seconds: float
                   ) -> tuple[list[float], list[float]]:
    reserves: list[float] = []
    extends: list[float] = []
    deadline = time.perf_counter() + seconds

    async def stream() -> None:
        while time.perf_counter() < deadline:
            rid = f"s{next(_IDS)}"
            start = time.perf_counter()
            await store.reserve(rid, HOLDS, lease=60, now=NOW)
            reserves.append(time.perf_counter() - start)
            for _ in range(EXTENSIONS):
                start = time.perf_counter()
                assert await store.extend(rid, SLICE, lease=60, now=NOW) is None
                extends.append(time.perf_counter() - start)
            await store.settle(rid, {"tokens": 4_000}, now=NOW)

    await asyncio.gather(*[stream() for _ in range(tasks)])
    return reserves, extends


async def _evalsha(store: StateStore) -> int:
    stats = await store._redis.info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def bench(name: str, url: str, seconds: float, opts: dict[str, object]) -> list[str]:
    rows = []
    for tasks in (1, 16):
        store = from_url(url, **opts)
        await _streams(store, tasks, 0.3)  # warm-up (scripts, schema)
        before = await _evalsha(store) if name == "redis" else 0
        started = time.perf_counter()
        reserves, extends = await _streams(store, tasks, seconds)
        elapsed = time.perf_counter() - started
        trips = "n/a"
        if name == "redis":
            # per stream: 1 reserve + 16 extends + 1 settle scripts
            ops = len(reserves) * (EXTENSIONS + 2)
            trips = f"{(await _evalsha(store) - before) / ops:.2f}"
        await store.close()
        reserve_p50 = statistics.median(reserves) * 1e3
        extend_p50 = statistics.median(extends) * 1e3
        extend_p99 = statistics.quantiles(extends, n=100)[98] * 1e3
        rows.append(f"| {name} | {tasks} | {int(len(extends) / elapsed):,} | "
                    f"{reserve_p50:.3f} | {extend_p50:.3f} | {extend_p99:.3f} | "
                    f"{extend_p50 / reserve_p50:.2f}× | {trips} |")
        print(rows[-1], flush=True)
    return rows


async def main(args: argparse.Namespace) -> str:
    rows = ["| store | streams | extends/s | reserve p50 ms | extend p50 ms | extend p99 ms "
            "| extend / reserve (p50) | redis scripts per op |",
            "|---|---|---|---|---|---|---|---|"]
    rows += await on_every_state_store(bench, args.seconds)
    note = (f"Command: `python bench/extend.py --seconds {args.seconds}`  \n"
            f"Machine: {platform.machine()}, {platform.python_version()}, "
            "2 cores shared with other work; redis-server on loopback, same machine.  \n"
            "A stream: reserve (a minute limit and a run's lifetime limit) of its first "
            f"slice, {EXTENSIONS} extensions by 512 tokens, settle. The ratio compares the "
            "medians of extend and reserve measured in the same run; redis scripts per op "
            "from INFO commandstats (EVALSHA only: 1.00 = one round trip per operation).\n\n")
    return "# Streamed reservations: extend()\n\n" + note + "\n".join(rows) + "\n"


if __name__ == "__main__":
    run_from_command_line(main, seconds=2.0, out="bench/results/extend.md")
