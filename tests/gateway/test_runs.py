"""Agent runs through the gateway, with the official SDKs: a run's lifetime budget, the
loop cap (429 loop_limit, in each protocol's own format, not retried by the SDKs), and run
ids scoped to the caller."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from tallygate.sim import SimServer
from tests.support.gateway import RunningGateway

HELLO = [{"role": "user", "content": "Hello"}]
RUNS = {"run": {"tokens_per_run": 300, "max_attempts_per_step": 2}}


def _openai(gw: RunningGateway, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=2,
                         default_headers={"X-Tallygate-Feature": "chat", **headers})


def _anthropic(gw: RunningGateway, key: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=2,
                               default_headers={"X-Tallygate-Feature": "claude", **headers})


@pytest.fixture
def gw(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway(limits=RUNS)


def test_loop_cap_refuses_the_third_attempt_in_both_protocols(
    gw: RunningGateway, sim: SimServer
) -> None:
    key = gw.create_key("alice", "pro")
    run = {"X-Tallygate-Run": "ticket-1", "X-Tallygate-Step": "review"}
    oa = _openai(gw, key, **run)
    for _ in range(2):
        oa.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20)
    before = sim.stats.total
    with pytest.raises(openai.RateLimitError) as caught:
        oa.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20)
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "loop_limit"
    assert "'review'" in body["message"] and "'ticket-1'" in body["message"]
    assert "at most 2 attempts" in body["message"]
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in caught.value.response.headers
    assert sim.stats.total == before  # refused before the upstream, and not retried
    # Anthropic: the same cap, its own format; another step of the run still runs.
    ant = _anthropic(gw, key, **run)
    with pytest.raises(anthropic.RateLimitError) as refused:
        ant.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
    assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "loop limit" in refused.value.message
    other = _anthropic(gw, key, **{**run, "X-Tallygate-Step": "plan"})
    other.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
    rows = [r for r in gw.rows() if r.error_code == "loop_limit"]
    assert len(rows) == 2 and {r.step for r in rows} == {"review"}


def test_a_runs_lifetime_budget_is_its_own_and_never_resets(gw: RunningGateway) -> None:
    alice, bob = gw.create_key("alice", "pro"), gw.create_key("bob", "pro")
    run = {"X-Tallygate-Run": "shared-id"}
    spent = 0
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(20):  # each call holds input + 100 (the cap) and uses less
            _openai(gw, alice, **run).chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, max_tokens=200)
            spent += 1
    assert spent >= 3
    body: Any = caught.value.body
    assert body["code"] == "budget_exceeded"
    assert "lifetime token limit of run 'shared-id' of user 'alice'" in body["message"]
    assert "it never resets" in body["message"]
    assert caught.value.response.headers["x-should-retry"] == "false"
    # Bob sends the same run id: another run, with its whole budget.
    _openai(gw, bob, **run).chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                                    max_tokens=200)
    # A second key of Alice's shares her run (and its exhausted budget).
    with pytest.raises(openai.RateLimitError):
        _openai(gw, gw.create_key("alice", "pro"), **run).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=200)


async def test_parallel_calls_of_one_run_never_overspend_it(gw: RunningGateway) -> None:
    """Sub-agents of one run racing for its last tokens: the run's total stays within
    its lifetime budget, whatever the interleaving."""
    import asyncio

    key = gw.create_key("carol", "pro")
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                                default_headers={"X-Tallygate-Feature": "chat",
                                                 "X-Tallygate-Run": "fan-out"})

    async def call() -> bool:
        try:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                                 max_tokens=60)
        except openai.RateLimitError:
            return False
        return True

    results = await asyncio.gather(*[call() for _ in range(24)])
    await client.close()
    rows = [r for r in gw.rows() if r.run == "fan-out" and r.user == "carol"]
    used = sum(r.input_tokens + r.output_tokens for r in rows if r.error_code is None)
    assert 0 < sum(results) < 24
    assert used <= 300
