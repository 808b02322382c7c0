"""Webhook delivery for alerts, off the request path: a bounded queue drained by one task
that POSTs JSON with a timeout and retries with exponential back-off. A slow or failing
receiver only delays other alerts, never a call; when the queue is full new alerts are
dropped (and counted) rather than buffered without bound."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from tallygate.observe.tasks import cancel_and_wait

log = logging.getLogger("tallygate.alerts")


class Poster(Protocol):
    """Sends one POST; returns the HTTP status or raises on a network failure."""

    async def post(self, url: str, body: bytes) -> int: ...

    async def close(self) -> None: ...


class AiohttpPoster:
    """The default poster: one aiohttp session, opened on first use."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._session: Any = None

    async def post(self, url: str, body: bytes) -> int:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(
            url, data=body, headers={"content-type": "application/json",
                                     "user-agent": "tallygate-alerts"},
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        ) as resp:
            await resp.read()
            return resp.status

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(slots=True)
class DeliveryStats:
    queued: int = 0
    delivered: int = 0
    failed: int = 0  # gave up after every retry
    dropped: int = 0  # queue full
    attempts: int = 0


class WebhookSender:
    def __init__(self, poster: Poster | None = None, *, queue_size: int = 1000,
                 retries: int = 5, backoff: float = 0.5, max_backoff: float = 30.0,
                 timeout: float = 5.0) -> None:
        self.poster: Poster = poster or AiohttpPoster(timeout)
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=queue_size)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.stats = DeliveryStats()
        self._task: asyncio.Task[None] | None = None

    def send(self, url: str, payload: dict[str, Any]) -> bool:
        """Queue one POST; False when the queue is full (the alert is dropped)."""
        try:
            self.queue.put_nowait((url, orjson.dumps(payload)))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.warning("alert webhook queue full: alert dropped")
            return False
        self.stats.queued += 1
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tallygate-webhooks")

    async def stop(self, drain: float = 2.0) -> None:
        """Give queued alerts up to `drain` seconds, then stop and close the poster."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), drain)
            await cancel_and_wait(self._task)
            self._task = None
        await self.poster.close()

    async def _run(self) -> None:
        while True:
            url, body = await self.queue.get()
            try:
                await self.deliver(url, body)
            finally:
                self.queue.task_done()

    async def deliver(self, url: str, body: bytes) -> bool:
        """POST with retries; True once a 2xx answer arrives."""
        for attempt in range(self.retries + 1):
            self.stats.attempts += 1
            try:
                async with asyncio.timeout(self.timeout):  # a hard bound on any poster
                    status = await self.poster.post(url, body)
                if 200 <= status < 300:
                    self.stats.delivered += 1
                    return True
                problem = f"HTTP {status}"
            except Exception as exc:  # network errors, timeouts: retried like 5xx
                problem = type(exc).__name__
            if attempt < self.retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                log.info("alert webhook failed (%s); retry in %.2fs", problem, delay)
                await asyncio.sleep(delay)
        self.stats.failed += 1
        log.warning("alert webhook gave up after %d attempts", self.retries + 1)
        return False
