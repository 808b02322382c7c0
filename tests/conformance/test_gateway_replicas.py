"""Two gateway processes sharing one Redis store never let a plan's tokens exceed its
limit under 300 concurrent calls (provider-reported usage summed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from tallygate.keys import open_keystore
from tests.support.gateway import running_sim
from tests.support.procs import gateways, write_policy

LIMIT = 6_000


@pytest.mark.slow
def test_two_gateways_share_a_plan_limit(redis_url: str, tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        ledger = f"sqlite:///{tmp_path}/ledger.db"
        config = write_policy(tmp_path / "tallygate.yaml", {
            "storage": {"state": redis_url.replace("/0", "/3"), "ledger": ledger},
            "providers": {"openai": {"protocol": "openai", "base_url": f"{sim.url}/v1",
                                     "api_key": "sk-sim"}},
            "features": {"chat": {"max_output": 60, "model": "gpt-4o-mini"}},
            "plans": {"team": {"tokens_per_day": LIMIT}},
        })
        secret = asyncio.run(_create_key(ledger))
        # Replies use the whole output cap, so a reservation is what the call spends and
        # the limit can end nearly full even though all 300 calls arrive at once.
        sim.config.reply_tokens = 60
        try:
            with gateways(config, 2) as urls:
                outcomes = asyncio.run(_hammer(urls, secret, calls=300))
        finally:
            sim.config.reply_tokens = 16
    ok = [u for u in outcomes if u is not None]
    refused = len(outcomes) - len(ok)
    spent = sum(u.total_tokens for u in ok)
    assert spent <= LIMIT
    assert refused > 0  # the limit was actually reached
    assert spent >= LIMIT * 0.8  # and not by refusing needlessly


async def _create_key(ledger: str) -> str:
    store = await open_keystore(ledger)
    try:
        _, secret = await store.create("shared-user", "team")
    finally:
        await store.close()
    return secret


async def _hammer(
    urls: list[str], secret: str, calls: int
) -> list[openai.types.CompletionUsage | None]:
    clients = [openai.AsyncOpenAI(base_url=u + "/v1", api_key=secret, max_retries=0,
                                  default_headers={"X-Tallygate-Feature": "chat"})
               for u in urls]

    async def one(i: int) -> openai.types.CompletionUsage | None:
        try:
            reply = await clients[i % 2].chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"call {i}"}])
        except openai.RateLimitError:
            return None
        return reply.usage

    try:
        return await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        for client in clients:
            await client.close()
