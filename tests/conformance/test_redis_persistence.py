"""What a Redis restart does to the limits, and that tallygate says so: a Redis killed
and started again without persistence has forgotten the day's spending (the next call
that should be refused is admitted), with the append-only file it has not; `doctor` and
`serve`'s start-up block warn about the first, and about a Redis whose CONFIG cannot be
read, and stay quiet about the second."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tallygate.state import restart_warning
from tallygate.state.redis import RedisPersistence, RedisStore
from tallygate.types import Denial, Hold, Metric, Window
from tests.support.cli import tallygate_here
from tests.support.servers import free_port, redis_server

pytestmark = pytest.mark.redis  # some tests start Redis servers of their own

NOW = 1_800_000_000.0

def _hold(amount: int) -> list[Hold]:
    return [Hold(key="user:u1", metric=Metric.TOKENS, amount=amount, limit=1000,
                 window=Window.DAY)]


async def _spend(store: RedisStore, rid: str, amount: int) -> Denial | None:
    denied = await store.reserve(rid, _hold(amount), lease=60, now=NOW)
    if denied is None:
        await store.settle(rid, {"tokens": amount}, now=NOW)
    return denied


@pytest.mark.parametrize(("settings", "remembers"), [
    ((), False),
    (("--appendonly", "yes"), True),  # appendfsync everysec, Redis's default
])
def test_a_killed_redis_comes_back_with_what_its_persistence_kept(
        tmp_path: Path, settings: tuple[str, ...], remembers: bool) -> None:
    port, data = free_port(), str(tmp_path)

    async def run() -> tuple[Denial | None, str | None]:
        with redis_server(*settings, port=port, directory=data) as first:
            url = first.url
            store = RedisStore(url)
            assert await _spend(store, "a", 900) is None
            warning = await restart_warning(url)
            os.kill(first.pid, signal.SIGKILL)  # a crash: no shutdown save
            await asyncio.sleep(0.05)
        with redis_server(*settings, port=port, directory=data):
            try:  # the same store, its connections gone: it reconnects
                return await _spend(store, "b", 200), warning
            finally:
                await store.close()

    denied, warning = asyncio.run(run())
    if remembers:
        assert isinstance(denied, Denial) and warning is None
    else:  # the 900 spent before the crash are forgotten, and we said they would be
        assert denied is None
        assert warning is not None and "persistence off" in warning


@pytest.mark.parametrize(("found", "says"), [
    (RedisPersistence(appendonly=True, appendfsync="everysec", save=""), None),
    (RedisPersistence(appendonly=False, appendfsync="everysec", save="3600 1 300 100"),
     "snapshots only (save 3600 1 300 100)"),
    (RedisPersistence(appendonly=False, appendfsync="everysec", save=""), "persistence off"),
])
def test_each_setting_is_said(found: RedisPersistence, says: str | None) -> None:
    warning = found.warning()
    assert (warning is None) if says is None else (says in str(warning))
    assert warning is None or warning.endswith("run Redis with appendonly yes")


def _doctor(tmp_path: Path, state: str) -> dict[str, str]:
    config = tmp_path / "t.yaml"
    config.write_text(yaml.safe_dump({"storage": {"state": state,
                                                  "ledger": f"sqlite:///{tmp_path}/l.db"}}))
    done = tallygate_here("doctor", "--config", str(config), "--json", cwd=tmp_path)
    checks = {c["what"]: c for c in json.loads(done.stdout)["checks"]}
    return checks["state store"]


def test_doctor_warns_about_a_redis_that_forgets(tmp_path: Path, redis_url: str) -> None:
    check = _doctor(tmp_path, redis_url)  # the suite's Redis: no persistence at all
    assert check["status"] == "warn"
    assert "persistence off" in check["detail"] and "appendonly yes" in check["detail"]
    with redis_server("--appendonly", "yes") as kept:
        assert _doctor(tmp_path, kept.url)["status"] == "ok"
    with redis_server("--save", "60 1") as snapshots:
        check = _doctor(tmp_path, snapshots.url)
    assert check["status"] == "warn" and "snapshots only (save 60 1)" in check["detail"]
    with redis_server("--rename-command", "CONFIG", "") as managed:
        check = _doctor(tmp_path, managed.url)
    assert check["status"] == "warn" and "persistence not readable" in check["detail"]
    memory = _doctor(tmp_path, "memory://")
    assert memory["status"] == "warn" and "live in this process" in memory["detail"]
    assert _doctor(tmp_path, f"sqlite:///{tmp_path}/s.db")["status"] == "ok"


def test_every_pooled_connection_survives_a_restart(tmp_path: Path) -> None:
    """Connections the restart closed are replaced on their first use, not reported as an
    outage (which refuses the call under fail_closed): eight calls in flight before,
    eight after."""
    port = free_port()

    async def run() -> list[Denial | None]:
        with redis_server("--appendonly", "yes", port=port, directory=str(tmp_path)) as first:
            store = RedisStore(first.url)
            await asyncio.gather(*(_spend(store, f"a{i}", 10) for i in range(8)))
            os.kill(first.pid, signal.SIGKILL)
            await asyncio.sleep(0.05)
        with redis_server("--appendonly", "yes", port=port, directory=str(tmp_path)):
            try:
                return list(await asyncio.gather(*(_spend(store, f"b{i}", 10)
                                                   for i in range(8))))
            finally:
                await store.close()

    assert asyncio.run(run()) == [None] * 8


class ReplyDropper:
    """A TCP proxy in front of Redis that, when armed, lets one command through and
    drops the connection instead of passing its reply back: the command ran, the client
    never heard. redis-py sends it again on a new connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = False
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       replies: bool) -> None:
            while data := await src.read(65536):
                if replies and self.armed:
                    self.armed = False
                    self.dropped += 1
                    break
                dst.write(data)
                await dst.drain()
            writer.close()
            up_writer.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True),
                             return_exceptions=True)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def test_a_reply_lost_with_its_connection_is_not_charged_twice(redis_url: str) -> None:
    async def run() -> None:
        proxy = ReplyDropper(urlsplit(redis_url).port or 6379)
        store = RedisStore(await proxy.start(), namespace=f"drop{os.getpid()}",
                           max_connections=1)
        try:
            # The connection made and each script loaded before arming: the reply dropped
            # must be the command's own, not the hello or a NOSCRIPT.
            assert await _spend(store, "warm", 1) is None
            assert await store.claim("alert:warm", 60, now=NOW) is True
            proxy.armed = True
            assert await store.reserve("r1", _hold(100), lease=60, now=NOW) is None
            proxy.armed = True
            await store.settle("r1", {"tokens": 70}, now=NOW)
            use = await store.usage("user:u1", limit=1000, window=Window.DAY, now=NOW)
            assert (use.used, use.reserved) == (71, 0)  # reserved once, settled once
            proxy.armed = True
            assert await store.claim("alert:cost", 60, now=NOW) is True  # the winner wins
            assert await store.claim("alert:cost", 60, now=NOW) is False  # nobody else
            assert proxy.dropped == 3
        finally:
            await store.close()
            await proxy.close()

    asyncio.run(run())
