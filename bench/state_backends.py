"""The state stores a store benchmark runs against, in its table's order: memory, SQLite,
SQLite in owner mode (temporary files) and Redis (its own loopback redis-server). Used by
bench/stores.py and bench/extend.py."""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable

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
