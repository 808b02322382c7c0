"""Reserve+settle pairs per second and p50/p99 pair latency per state store, with one
task and with 64 concurrent tasks. Redis runs on its own loopback port; its round trips
per operation are counted from INFO commandstats deltas.

Run: python bench/stores.py [--seconds 3] [--out bench/results/stores.md]"""

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
_IDS = iter(range(10**12))
HOLDS = [Hold("global:tokens:minute", 100, 10**15, Window.MINUTE),
         Hold("user:u1:tokens:day", 100, 10**15, Window.DAY)]


async def _run(store: StateStore, tasks: int, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            for _ in range(50):  # check the clock every 50 pairs
                rid = f"b{next(_IDS)}"
                start = time.perf_counter()
                await store.reserve(rid, HOLDS, lease=60, now=NOW)
                await store.settle(rid, {"tokens": 80}, now=NOW)
                latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(tasks)])
    elapsed = time.perf_counter() - started
    return int(len(latencies) / elapsed), latencies


async def _commands(store: StateStore) -> int:
    stats = await store._redis.info("commandstats")  # type: ignore[attr-defined]
    # Only commands a client sent: the ones scripts run inside Redis are not round trips.
    return sum(v["calls"] for k, v in stats.items()
               if k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script"))


async def bench(name: str, url: str, seconds: float, opts: dict[str, object]
                ) -> list[str]:
    rows = []
    for tasks in (1, 64):
        store = from_url(url, **opts)
        await _run(store, tasks, 0.3)  # warm-up (script load, schema)
        before = await _commands(store) if name == "redis" else 0
        rate, lat = await _run(store, tasks, seconds)
        trips = ""
        if name == "redis":
            ops = 2 * len(lat)
            trips = f"{(await _commands(store) - before) / ops:.2f}"
        await store.close()
        q = statistics.quantiles(lat, n=100)
        rows.append(f"| {name} | {tasks} | {rate:,} | {q[49] * 1e3:.3f} | {q[98] * 1e3:.3f} "
                    f"| {trips or 'n/a'} |")
        print(rows[-1], flush=True)
    return rows


async def main(args: argparse.Namespace) -> str:
    rows = ["| store | tasks | pairs/s | p50 ms | p99 ms | redis commands per op |",
            "|---|---|---|---|---|---|"]
    rows += await on_every_state_store(bench, args.seconds)
    note = (f"Command: `python bench/stores.py --seconds {args.seconds}`  \n"
            f"Machine: {platform.machine()}, {platform.python_version()}, "
            "2 cores shared with other work; redis-server 7 on loopback, same machine.  \n"
            "One pair = reserve (2 limits: minute + day) then settle (owner mode: in memory, "
            "each operation appended to its journal, snapshots to SQLite every second). "
            "Redis commands per op "
            "from INFO commandstats deltas (EVALSHA only: 1 = one round trip).\n\n")
    return "# State stores\n\n" + note + "\n".join(rows) + "\n"


if __name__ == "__main__":
    run_from_command_line(main, seconds=3.0, out="bench/results/stores.md")
