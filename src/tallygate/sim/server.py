"""The simulated provider as an aiohttp application, and a running server of it."""

from __future__ import annotations

import asyncio
from collections import deque

from aiohttp import web

from tallygate.sim import anthropic as sim_anthropic
from tallygate.sim import openai as sim_openai
from tallygate.sim.agents import LruSet
from tallygate.sim.common import (
    _COUNT_CACHE,
    CONFIG,
    FAULTS,
    PROMPT_CACHE,
    RATE,
    STATS,
    Fault,
    SimConfig,
    SimStats,
    _RateHeaders,
)


def create_sim_app(config: SimConfig | None = None) -> web.Application:
    """The simulated provider as an aiohttp application."""
    config = config or SimConfig()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[CONFIG] = config
    app[STATS] = SimStats()
    app[FAULTS] = deque()
    app[_COUNT_CACHE] = {}
    app[PROMPT_CACHE] = LruSet()
    app[RATE] = _RateHeaders(config)
    sim_openai.add_routes(app)
    sim_anthropic.add_routes(app)
    return app


class SimServer:
    """A running simulated provider (see start_sim)."""

    def __init__(self, runner: web.AppRunner, app: web.Application, host: str, port: int):
        self._runner = runner
        self.app = app
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    @property
    def stats(self) -> SimStats:
        return self.app[STATS]

    @property
    def config(self) -> SimConfig:
        return self.app[CONFIG]

    def push_faults(self, *faults: str) -> None:
        """Queue faults ('429:1', '500', 'cut:3' …) for the next requests, in order."""
        self.app[FAULTS].extend(Fault.parse(f) for f in faults)

    def clear_faults(self) -> None:
        self.app[FAULTS].clear()

    async def close(self) -> None:
        await self._runner.cleanup()


async def start_sim(
    host: str = "127.0.0.1", port: int = 0, config: SimConfig | None = None
) -> SimServer:
    """Start the simulated provider on host:port (0 = a free port)."""
    from tallygate.core import bpe

    # The tokenizer it counts prompts with is built off the loop, before the first request.
    await asyncio.to_thread(bpe.warm)
    app = create_sim_app(config)
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return SimServer(runner, app, host, int(bound))
