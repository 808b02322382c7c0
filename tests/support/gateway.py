"""Run the simulated provider and the gateway on free loopback ports, each in its own
thread with its own event loop, so sync and async SDK clients can call them."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn

from tallygate.config import Policy
from tallygate.gateway.app import Gateway
from tallygate.gateway.guarded_http import GuardedConfig, Guards
from tallygate.sim import SimConfig, SimServer, start_sim
from tests.support.servers import free_port

T = TypeVar("T")
ADMIN_KEY = "tg-admin-test-key"


class LoopThread:
    """An event loop running in a daemon thread; `call()` runs a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Awaitable[T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@contextmanager
def running_sim(config: SimConfig | None = None) -> Iterator[tuple[SimServer, LoopThread]]:
    lt = LoopThread()
    sim = lt.call(start_sim(config=config))
    try:
        yield sim, lt
    finally:
        lt.call(sim.close())
        lt.stop()


def sim_policy(sim_url: str, tmp: str, **sections: Any) -> Policy:
    """A policy whose openai and anthropic providers are the simulator."""
    data: dict[str, Any] = {
        "storage": {"state": "memory://", "ledger": f"sqlite:///{tmp}/ledger.db"},
        "providers": {
            "openai": {"protocol": "openai", "base_url": f"{sim_url}/v1", "api_key": "sk-sim"},
            "anthropic": {"protocol": "anthropic", "base_url": sim_url, "api_key": "sk-sim"},
        },
        "admin_key": ADMIN_KEY,
    }
    data.update(sections)
    return Policy.from_mapping(data, "<test>")


@dataclass
class RunningGateway:
    url: str
    gateway: Gateway
    loop: LoopThread

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        return self.loop.call(fn(*args, **kw))

    def create_key(self, user: str = "u1", plan: str = "free", **kw: Any) -> str:
        assert self.gateway.runtime is not None
        _, secret = self.loop.call(self.gateway.runtime.keys.create(user, plan, **kw))
        return secret

    def rows(self) -> list[Any]:
        rt = self.gateway.runtime
        assert rt is not None
        self.loop.call(rt.writer.flush())
        return self.loop.call(rt.ledger.records())


class _TestServer(uvicorn.Server):
    """uvicorn whose main loop waits for `stop()` instead of waking every 0.1 s, and says
    it is up by an event: a test gateway starts and stops without polling."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = threading.Event()
        self._stop: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._stop = asyncio.Event()
        self.up.set()
        await self._stop.wait()

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.should_exit = True
        if self._stop is not None:
            loop.call_soon_threadsafe(self._stop.set)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown steps without its fixed pauses (0.1 s after asking the
        connections to close, then 0.1 s between checks), which every test's gateway paid
        at teardown: here the waits end as soon as the connections and tasks are gone."""
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        state = self.server_state
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown or 10):
                while state.connections or state.tasks:  # noqa: ASYNC110 (no event)
                    await asyncio.sleep(0.001)
        except TimeoutError:  # as uvicorn does past its graceful deadline
            for task in state.tasks:
                task.cancel()
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


@contextmanager
def running_gateway(policy: Policy, *, guards: Guards | None = None,
                    **uvicorn_kw: Any) -> Iterator[RunningGateway]:
    """The gateway under uvicorn; with `guards`, under the guarded protocol `serve` uses."""
    port = free_port()
    gw = Gateway(policy, access_log=uvicorn_kw.pop("access_log_path", None))
    common: dict[str, Any] = dict(host="127.0.0.1", port=port, loop="asyncio",
                                  lifespan="on", log_level="warning", access_log=False)
    config = (uvicorn.Config(gw, **common, **uvicorn_kw) if guards is None
              else GuardedConfig(gw, guards=guards, **common, **uvicorn_kw))
    server = _TestServer(config)
    lt = LoopThread()
    task = asyncio.run_coroutine_threadsafe(server.serve(), lt.loop)
    try:
        while not server.up.wait(0.05):
            if task.done():
                task.result()
                raise RuntimeError("gateway did not start")
            if not lt.thread.is_alive():  # uvicorn ends its loop (SystemExit) on a failed startup
                raise RuntimeError("gateway did not start: its startup failed (see the log)")
        yield RunningGateway(f"http://127.0.0.1:{port}", gw, lt)
    finally:
        server.stop(lt.loop)
        task.result(timeout=20)
        lt.stop()


def http(method: str, url: str, body: bytes | None = None,
         headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP call (urllib): status, lower-cased headers, body — errors included."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
