"""Stopping without losing a call. The proxied requests in flight are tracked here; on
shutdown (SIGTERM, or the first Ctrl-C) new requests get a 503, calls in flight may
finish until the deadline, and then every stream still relaying is cut with its
protocol's error event and every other request is cancelled — each one settled with
the tokens it already relayed and recorded (engine.owning / finish_stream). `cut_now()`
(a second Ctrl-C) does the cutting at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("tallygate.gateway")

DEFAULT_DEADLINE = 10.0  # seconds streams may run on after a shutdown began
CUT_GRACE = 1.0  # seconds a cut stream has to write its error event and its row


class Drain:
    def __init__(self) -> None:
        self.stopping = False
        self.cut = asyncio.Event()  # set: streams end now
        self._tasks: set[asyncio.Task[object]] = set()
        self._streams = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopper: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @contextmanager
    def track(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._idle.clear()
        try:
            yield
        finally:
            self._tasks.discard(task)
            if not self._tasks:
                self._idle.set()

    @contextmanager
    def relaying(self) -> Iterator[None]:
        """A tracked call relaying a stream (counted in the shutdown log): known only
        once its body was read — SDKs ask for a stream in the body, not in Accept."""
        self._streams += 1
        try:
            yield
        finally:
            self._streams -= 1

    def begin(self, deadline: float = DEFAULT_DEADLINE) -> None:
        """Start stopping (idempotent): in-flight calls get `deadline` seconds."""
        if self.stopping:
            return
        self.stopping = True
        if self._tasks:
            log.warning("shutting down: waiting for %d call(s) in flight (%d streaming); "
                        "streams are cut after %.0f s", self.in_flight, self._streams, deadline)
        self._stopper = asyncio.ensure_future(self._stop(deadline))

    def cut_now(self) -> None:
        """Cut every stream and cancel every other call now."""
        self.stopping = True
        if not self.cut.is_set():
            log.warning("stopping now: cutting %d call(s) in flight", self.in_flight)
        self.cut.set()
        asyncio.get_running_loop().call_later(CUT_GRACE, self._cancel_rest)

    async def wait(self, timeout: float | None = None) -> bool:
        """True once nothing is in flight (False when `timeout` passed first)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _stop(self, deadline: float) -> None:
        if await self.wait(deadline):
            return
        self.cut_now()
        await self.wait(CUT_GRACE * 2)

    def _cancel_rest(self) -> None:
        for task in list(self._tasks):
            task.cancel()
