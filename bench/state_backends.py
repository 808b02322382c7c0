"""What the state-store benchmarks (bench/stores.py, bench/extend.py) share: the stores
they run against, in their table's order — memory, SQLite, SQLite in owner mode (temporary
files) and Redis (its own loopback redis-server) — and their command line."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support.servers import redis_server

# (name, url, seconds, from_url options) → that backend's table rows
Bench = Callable[[str, str, float, dict[str, object]], Awaitable[list[str]]]


async def on_every_state_store(bench: Bench, seconds: float) -> list[str]:
    rows = await bench("memory", "memory://", seconds, {})
    with tempfile.TemporaryDirectory() as tmp:
        rows += await bench("sqlite", f"sqlite:///{tmp}/bench.db", seconds, {})
        rows += await bench("sqlite owner mode", f"sqlite:///{tmp}/owned.db", seconds,
                            {"owner": True})
    with redis_server() as server:
        rows += await bench("redis", server.url, seconds, {"namespace": "bench"})
    return rows


def run_from_command_line(report: Callable[[argparse.Namespace], Awaitable[str]], *,
                          seconds: float, out: str) -> None:
    """`--seconds` (per store and concurrency) and `--out` (the markdown file written)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=seconds)
    parser.add_argument("--out", default=out)
    arguments = parser.parse_args()
    Path(arguments.out).write_text(asyncio.run(report(arguments)))
