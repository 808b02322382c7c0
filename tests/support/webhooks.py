"""A local webhook receiver (aiohttp on 127.0.0.1) for alert tests: records every POST's
JSON body; can answer 500 for the first N posts, or hang until released."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tests.support.servers import free_port


class Receiver:
    def __init__(self, *, fail_first: int = 0, hang: bool = False) -> None:
        self.fail_first = fail_first
        self.hang = hang
        self.release = asyncio.Event()
        self.posts: list[dict[str, Any]] = []  # bodies answered 2xx
        self.attempts = 0
        self.changed = asyncio.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.attempts += 1
        if self.hang:
            await self.release.wait()
        if self.attempts <= self.fail_first:
            return web.Response(status=500, text="down")
        self.posts.append(body)
        self.changed.set()
        return web.Response(status=204)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def wait_for(self, n: int) -> list[dict[str, Any]]:
        """The posts once there are n of them (at most 10 s)."""
        async with asyncio.timeout(10.0):
            while len(self.posts) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.posts

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
