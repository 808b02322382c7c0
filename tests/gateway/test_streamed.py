"""Streamed reservations: a streaming call holds its input plus an output slice and grows
the hold as tokens arrive, so agent-sized turns (asking 32,000, using far less) no longer
starve a plan; when the hold cannot grow, the stream ends with the protocol's own length
stop and the limit holds."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import anthropic
import openai
import pytest

from tallygate.types import Outcome
from tests.support.gateway import RunningGateway
from tests.support.resilience import limits

# The upstream transport is exercised here: run on both (tests/support/fixtures.py).
BOTH_TRANSPORTS = True

# Agent-sized turns scaled down ten times (a 6,000-token plan, 3,200 asked, a 256-token
# slice) so the suite stays fast; bench/streamed.py measures the real sizes.
PLAN = {"agent": {"tokens_per_day": 6_000}}
ASK = 3_200
SLICE = 256
PROMPT = [{"role": "user", "content": "Write the next part of the change."}]


def _client(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


@contextmanager
def replies(sim: Any, tokens: int) -> Iterator[None]:
    """The simulator answers with `tokens` output tokens (up to the call's cap)."""
    before = sim.config.reply_tokens
    sim.config.reply_tokens = tokens
    try:
        yield
    finally:
        sim.config.reply_tokens = before


def _stream(client: openai.OpenAI) -> tuple[str | None, int, int]:
    """(finish_reason, words received, total tokens the stream reported)."""
    finish, words, total = None, 0, 0
    for chunk in client.chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, max_tokens=ASK, stream=True,
            stream_options={"include_usage": True}):
        for choice in chunk.choices:
            words += len((choice.delta.content or "").split())
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            total = chunk.usage.total_tokens
    return finish, words, total


def _gw(make_gateway: Any, **feature: Any) -> RunningGateway:
    gw: RunningGateway = make_gateway(plans=PLAN,
                                      features={"default": {"stream_slice": SLICE, **feature}})
    return gw


def test_as_many_agent_turns_as_fit_and_the_last_one_is_cut(make_gateway, sim) -> None:  # type: ignore[no-untyped-def]
    gw = _gw(make_gateway)
    key = gw.create_key("dev", "agent")
    client = _client(gw, key)
    with replies(sim, 1_400):  # each turn asks 3,200
        results = [_stream(client) for _ in range(5)]
    assert [finish for finish, _, _ in results] == ["stop"] * 4 + ["length"]
    rows = gw.rows()
    assert all(r.outcome is Outcome.OK for r in rows)
    day = limits(gw, key)["user:dev:tokens:day"]
    assert day["reserved"] == 0 and day["used"] == sum(r.input_tokens + r.output_tokens
                                                       for r in rows)
    assert day["used"] <= 6_000  # never past the plan
    cut = rows[-1]
    assert '"stopped":"budget"' in (cut.detail or "") and not cut.exact
    assert cut.output_tokens >= results[-1][1]  # charged what the client got, or more


def test_full_reservations_starve_the_same_plan(make_gateway, sim) -> None:  # type: ignore[no-untyped-def]
    """The contrast (`reserve: full`): each turn holds its whole 3,200-token cap."""
    gw = _gw(make_gateway, reserve="full")
    key = gw.create_key("dev", "agent")
    client = _client(gw, key)
    with replies(sim, 1_500):
        assert _stream(client)[0] == "stop"
        assert _stream(client)[0] == "stop"
        with pytest.raises(openai.RateLimitError):  # ~3,030 used + 3,215 held > 6,000
            _stream(client)


def test_parallel_small_turns_fill_the_plan(make_gateway, sim) -> None:  # type: ignore[no-untyped-def]
    """Claude-Code-sized calls (ask 32,000, use ~3,300 — here a tenth), 4 at a time: full
    holds served 8 of the 18 that fit; streamed ones serve all that fit."""
    gw = _gw(make_gateway)
    key = gw.create_key("dev", "agent")
    client = _client(gw, key)

    def one(_: int) -> str | None:
        try:
            return _stream(client)[0]
        except openai.RateLimitError:
            return "refused"

    with replies(sim, 330), ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(one, range(24)))
    # 6,000 / ~345 per turn: 17 fit. The last ones, racing for the same tokens, are cut
    # short (a length stop) rather than refused outright.
    assert outcomes.count("stop") >= 14
    assert outcomes.count("stop") + outcomes.count("length") >= 17
    used = limits(gw, key)["user:dev:tokens:day"]["used"]
    assert 5_400 <= used <= 6_000


def test_an_anthropic_stream_is_cut_at_max_tokens(make_gateway, sim) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(plans={"agent": {"tokens_per_day": 800}},
                      features={"default": {}, "claude": {"model": "claude-haiku-4-5",
                                                          "stream_slice": 128}})
    key = gw.create_key("dev", "agent")
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0,
                                 default_headers={"x-tallygate-feature": "claude"})
    with replies(sim, 2_000), client.messages.stream(
            model="claude-haiku-4-5", max_tokens=ASK, messages=PROMPT) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens" and final.content[0].text
    [row] = gw.rows()
    assert row.input_tokens + row.output_tokens <= 800  # cut inside the hold
    assert limits(gw, key)["user:dev:tokens:day"]["reserved"] == 0
