"""SIGKILL the gateway under load, restart it: every 2xx a client received has its
ledger row (the writer journals a row before the response is sent; the restart
replays the journal), and the user's budget holds every settled call (a one-worker
gateway owns its SQLite state: the state journal is replayed too)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tallygate.keys import open_keystore
from tallygate.ledger import open_ledger
from tallygate.state import from_url
from tallygate.types import CallRecord, Window
from tests.support.gateway import running_sim
from tests.support.procs import start_gateway, stop, write_policy

MAX_OUTPUT = 50


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_row(tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path}/ledger.db"
    with running_sim() as (sim, _):
        config = write_policy(tmp_path / "tallygate.yaml", {
            "storage": {"state": f"sqlite:///{tmp_path}/state.db", "ledger": ledger_url},
            "providers": {"openai": {"protocol": "openai", "base_url": f"{sim.url}/v1",
                                     "api_key": "sk-sim"}},
            "features": {"default": {"max_output": MAX_OUTPUT, "model": "gpt-4o-mini"}},
            "plans": {"free": {"tokens_per_day": 10**9}},
        })
        secret = asyncio.run(_create_key(ledger_url))
        url, proc = start_gateway(config)
        acked = asyncio.run(_load_then_kill(url, secret, proc))
        # Restart: start-up replays the journal the killed process left behind.
        _, proc2 = start_gateway(config)
        stop(proc2)
    rows = asyncio.run(_ledger_rows(ledger_url))
    ids = {row.request_id for row in rows}
    assert len(acked) >= 50, "the load did not get going before the kill"
    missing = acked - ids
    assert not missing, f"{len(missing)} acknowledged calls have no ledger row"
    # A call is settled before its row is written: every row's tokens are in the budget;
    # at most the 16 calls in flight at the kill were settled without a row.
    recorded = sum(row.input_tokens + row.output_tokens for row in rows)
    most = max(row.input_tokens + row.output_tokens for row in rows)
    used, reserved = asyncio.run(_user_usage(f"sqlite:///{tmp_path}/state.db"))
    assert recorded <= used <= recorded + 16 * most, (recorded, used)
    # Holds of the 16 calls cut off stay until their lease ends: each is its input (a few
    # tokens here, counted by the gateway) plus the feature's output cap.
    assert max(row.input_tokens for row in rows) < MAX_OUTPUT
    assert reserved <= 16 * 2 * MAX_OUTPUT, reserved


async def _create_key(ledger_url: str) -> str:
    store = await open_keystore(ledger_url)
    try:
        return (await store.create("crash-user", "free"))[1]
    finally:
        await store.close()


async def _load_then_kill(url: str, secret: str, proc) -> set[str]:
    acked: set[str] = set()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {secret}"}
    stop_at = asyncio.Event()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop_at.is_set():
            try:
                async with session.post(url + "/v1/chat/completions", json=body,
                                        headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        acked.add(resp.headers["x-tallygate-request-id"])
            except (TimeoutError, aiohttp.ClientError):
                return

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(16)]
        for _ in range(200):  # at most 20 s: kill once enough calls were acknowledged
            await asyncio.sleep(0.1)
            if len(acked) >= 300:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop_at.set()
        await asyncio.gather(*tasks)
    return acked


async def _ledger_rows(ledger_url: str) -> list[CallRecord]:
    store = await open_ledger(ledger_url)
    try:
        return await store.records()
    finally:
        await store.close()


async def _user_usage(state_url: str) -> tuple[int, int]:
    store = from_url(state_url)  # shared mode: the gateways have stopped
    try:
        u = await store.usage("user:crash-user:tokens:day", limit=10**9, window=Window.DAY,
                              now=time.time())
        return u.used, u.reserved
    finally:
        await store.close()
