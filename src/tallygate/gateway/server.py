"""uvicorn's server, stopping the way a gateway must (gateway/drain.py):

  * SIGTERM or the first Ctrl-C: stop accepting, log what is in flight, let calls finish
    until the deadline (`server.shutdown_deadline`, default 10 s), then cut the streams
    still running with their protocol's error event — every call settled with the tokens
    it relayed and recorded — then flush the ledger and exit 0;
  * a second Ctrl-C (or SIGTERM): cut everything now, still settling and recording, and
    exit at once; a third gives up waiting altogether;
  * SIGHUP: reload the policy file (gateway/reload.py), never stop.

uvicorn alone waits for connections with no deadline and, on a second Ctrl-C, exits
without running the application's shutdown (no row for the calls it abandons), then
re-raises the signal (a KeyboardInterrupt traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Generator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

from tallygate.gateway.app import Gateway
from tallygate.gateway.drain import CUT_GRACE, DEFAULT_DEADLINE

log = logging.getLogger("tallygate.gateway")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, deadline: float = DEFAULT_DEADLINE) -> None:
        config.timeout_graceful_shutdown = int(deadline + 4 * CUT_GRACE) + 1
        config.shutdown_deadline = deadline  # type: ignore[attr-defined]  # for workers
        super().__init__(config)
        self.deadline = deadline
        self._signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def gateway(self) -> Gateway | None:
        """The Gateway under whatever middleware uvicorn wrapped around it."""
        app: Any = getattr(self.config, "loaded_app", None)
        for _ in range(8):
            if isinstance(app, Gateway) or app is None:
                return app
            app = getattr(app, "app", None)
        return None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        del frame
        self._signals += 1
        self.should_exit = True
        gw, loop = self.gateway(), self._loop
        if gw is None or loop is None:
            self.force_exit = self._signals > 1
            return
        if self._signals == 1:
            loop.call_soon_threadsafe(gw.begin_shutdown, self.deadline)
        elif self._signals == 2:
            loop.call_soon_threadsafe(gw.stop_now)
        else:
            self.force_exit = True

    def handle_hangup(self, sig: int, frame: FrameType | None) -> None:
        """SIGHUP: reload the policy file (gateway/reload.py); a bad file is logged and
        the running policy kept. Without this, SIGHUP would end the process."""
        del sig, frame
        gw, loop = self.gateway(), self._loop
        if gw is None or loop is None or gw.reloader is None:
            return
        reloader = gw.reloader
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(reloader.reload_logged()))

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, without re-raising the signals once the server has stopped: the
        gateway has stopped cleanly by then, and the process just ends."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        original[signal.SIGHUP] = signal.signal(signal.SIGHUP, self.handle_hangup)
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class GatewayProcess(multiprocess.Process):
    """A worker process whose server is a GatewayServer (uvicorn's runs a plain one).
    The deadline travels in the config (`shutdown_deadline`), which is what a worker
    process receives."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            deadline = getattr(self.config, "shutdown_deadline", DEFAULT_DEADLINE)
            self._server = GatewayServer(self.config, deadline=deadline)
        return self._server


class GatewaySupervisor(multiprocess.Multiprocess):
    """uvicorn's supervisor for `--workers N`, its workers stopping the gateway's way.
    uvicorn makes its worker processes from its module's `Process` at four places; for as
    long as this supervisor runs (in its own process only) that name is GatewayProcess."""

    def run(self) -> None:
        made = multiprocess.Process
        multiprocess.Process = GatewayProcess  # type: ignore[misc]
        try:
            super().run()
        finally:
            multiprocess.Process = made  # type: ignore[misc]
