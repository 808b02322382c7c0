"""Agent runs through the gateway, with the official SDKs: a run's lifetime budget, the
loop cap (429 loop_limit, in each protocol's own format, not retried by the SDKs), and run
ids scoped to the caller."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tallygate.sim import SimServer
from tests.support.gateway import ADMIN_KEY, RunningGateway, http

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
    # Bob asks about the same run id: he sees his own run (nothing used), never alice's.
    alice_sees, bob_sees = _run_usage(gw, alice, "shared-id"), _run_usage(gw, bob, "shared-id")
    assert set(alice_sees) == {"run:user.alice:shared-id:tokens:run"}
    assert set(bob_sees) == {"run:user.bob:shared-id:tokens:run"}
    assert alice_sees["run:user.alice:shared-id:tokens:run"]["used"] > 0
    assert (bob_sees["run:user.bob:shared-id:tokens:run"]["used"],
            bob_sees["run:user.bob:shared-id:tokens:run"]["remaining"]) == (0, 300)
    # Bob sends the same run id: another run, with its whole budget.
    _openai(gw, bob, **run).chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                                    max_tokens=200)
    # A second key of Alice's shares her run (and its exhausted budget).
    with pytest.raises(openai.RateLimitError):
        _openai(gw, gw.create_key("alice", "pro"), **run).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=200)


def _run_usage(gw: RunningGateway, key: str, run: str) -> dict[str, Any]:
    """The run limits `GET /v1/usage` shows a key for X-Tallygate-Run `run`."""
    status, _, raw = http("GET", gw.url + "/v1/usage", headers={
        "Authorization": f"Bearer {key}", "X-Tallygate-Run": run})
    assert status == 200, raw
    return {item["key"]: item for item in orjson.loads(raw)["limits"]
            if item["key"].startswith("run:")}


def test_two_owners_of_one_run_id_are_two_runs_in_every_report(gw: RunningGateway) -> None:
    """Alice's and bob's run `shared-id`: each runs view has one run each, with only its
    owner's calls and tokens."""
    alice, bob = gw.create_key("alice", "pro"), gw.create_key("bob", "pro")
    run = {"X-Tallygate-Run": "shared-id", "X-Tallygate-Step": "edit"}
    for _ in range(2):
        _openai(gw, alice, **run).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=20)
    _anthropic(gw, bob, **run).messages.create(model="claude-haiku-4-5", max_tokens=20,
                                               messages=HELLO)
    spent: dict[str, tuple[int, int]] = {}
    for row in gw.rows():
        calls, tokens = spent.get(f"user.{row.user}", (0, 0))
        spent[f"user.{row.user}"] = (calls + 1, tokens + row.input_tokens + row.output_tokens)
    assert spent["user.alice"][0] == 2 and spent["user.bob"][0] == 1
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    status, _, raw = http("GET", gw.url + "/admin/reports/runs?run=shared-id", headers=admin)
    assert status == 200, raw
    runs = {r["owner"]: (r["calls"], r["total_tokens"]) for r in orjson.loads(raw)["runs"]}
    assert runs == spent
    status, _, raw = http("GET", gw.url + "/admin/reports/runs?run=shared-id&owner=user.bob",
                          headers=admin)
    assert [(r["owner"], r["calls"]) for r in orjson.loads(raw)["runs"]] == [("user.bob", 1)]
    status, _, raw = http("GET", gw.url + "/admin/reports?by=run", headers=admin)
    by_run = {(r["key"], r["owner"]): (r["calls"], r["total_tokens"])
              for r in orjson.loads(raw)["rows"]}
    assert by_run == {("shared-id", owner): figures for owner, figures in spent.items()}


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
