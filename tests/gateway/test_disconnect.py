"""A client that disconnects mid-stream: the upstream is closed, the tokens generated so
far are settled, and nothing stays reserved."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from tallygate.gateway.guarded_http import Guards
from tallygate.types import Outcome
from tests.support.gateway import RunningGateway, http, running_gateway, sim_policy
from tests.support.policies import FEATURES, PLANS
from tests.support.waiting import eventually

# The upstream transport is exercised here: run on both (tests/support/fixtures.py).
BOTH_TRANSPORTS = True


async def _read_some_then_close(url: str, key: str, body: dict, chunks: int) -> int:
    seen = 0
    async with aiohttp.ClientSession() as session, session.post(url, json=body, headers={
            "authorization": f"Bearer {key}", "X-Tallygate-Feature": "chat"}) as resp:
        assert resp.status == 200
        async for _ in resp.content.iter_any():
            seen += 1
            if seen >= chunks:
                break
        # leaving the block closes the connection mid-stream
    return seen


def _wait_rows(gw: RunningGateway, n: int) -> list:
    return eventually(lambda: rows if len(rows := gw.rows()) >= n else None)


def test_disconnect_settles_tokens_so_far(gateway: RunningGateway, sim) -> None:
    key = gateway.create_key("leaver", "pro")
    sim.config.tokens_per_second = 40  # 100 tokens take 2.5 s: plenty of time to leave
    sim.config.reply_tokens = 100
    try:
        body = {"model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": "tell me a long story"}]}
        asyncio.run(_read_some_then_close(gateway.url + "/v1/chat/completions", key, body, 4))
        [row] = _wait_rows(gateway, 1)
    finally:
        sim.config.tokens_per_second = 0
        sim.config.reply_tokens = 16
    assert row.outcome == Outcome.ERROR and row.error_code == "client_disconnected"
    assert 0 < row.output_tokens < 100  # generated so far, not the whole reply
    assert row.input_tokens > 0 and row.cost_nusd > 0
    _, _, raw = http("GET", gateway.url + "/v1/usage",
                          headers={"Authorization": f"Bearer {key}"})
    limits = {item["key"]: item for item in orjson.loads(raw)["limits"]}
    day = limits["user:leaver:tokens:day"]
    assert day["reserved"] == 0
    assert day["used"] == row.input_tokens + row.output_tokens


async def _give_up_after(url: str, key: str, body: dict, seconds: float) -> None:
    timeout = aiohttp.ClientTimeout(total=seconds)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.post(url, json=body, headers={
                    "authorization": f"Bearer {key}",
                    "x-tallygate-request-id": "gave-up-1"}) as resp:
                await resp.read()
        except TimeoutError:
            return
    raise AssertionError("the answer came before the client's timeout")


def test_a_client_that_gives_up_before_the_answer_is_recorded_499(
        sim, tmp_path, transport: str) -> None:
    """A whole (non-streamed) answer the client left before: nobody received it, so its
    row says 499 client_disconnected, not 200; the tokens the upstream reported are
    charged all the same, and nothing stays held. (`serve`'s protocol tells the gateway
    the connection is gone.)"""
    policy = sim_policy(sim.url, str(tmp_path), features=FEATURES, plans=PLANS,
                        server={"upstream": transport})
    sim.clear_faults()
    sim.config.latency_ms = 600  # the upstream answers after the client gave up
    try:
        with running_gateway(policy, guards=Guards()) as gw:
            key = gw.create_key("quitter", "pro")
            body = {"model": "gpt-4o-mini", "max_tokens": 16,
                    "messages": [{"role": "user", "content": "hello"}]}
            asyncio.run(_give_up_after(gw.url + "/v1/chat/completions", key, body, 0.2))
            [row] = _wait_rows(gw, 1)
            _, _, raw = http("GET", gw.url + "/v1/usage",
                             headers={"Authorization": f"Bearer {key}"})
    finally:
        sim.config.latency_ms = 0
    assert row.client_request_id == "gave-up-1"
    assert (row.status, row.error_code) == (499, "client_disconnected")
    assert row.output_tokens == 16 and row.cost_nusd > 0  # generated: billed
    limits = {item["key"]: item for item in orjson.loads(raw)["limits"]}
    day = limits["user:quitter:tokens:day"]
    assert day["reserved"] == 0
    assert day["used"] == row.input_tokens + row.output_tokens
