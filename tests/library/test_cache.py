"""The library's exact-match response cache (`features.X.cache` with `cache.hmac_key`)
through governed OpenAI and Anthropic clients: a second identical call is answered
without the provider, as the SDK's own response type, and recorded as `cached` with the
tokens it saved; a stream, or a feature without `cache`, always reaches the provider."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion

from tallygate.library import Governor
from tallygate.sim import SimServer
from tallygate.types import CallRecord, Outcome
from tests.support.gateway import sim_policy
from tests.support.policies import FEATURES, PLANS

HI = [{"role": "user", "content": "What are your opening hours?"}]
CACHE = {"hmac_key": "library-cache-signing-key-0123456789"}
CACHED_FEATURES = {
    **FEATURES,
    "faq": {"max_output": 50, "model": "gpt-4o-mini", "cache": True},
    "faq-claude": {"max_output": 50, "model": "claude-haiku-4-5", "cache": True},
}


@pytest.fixture
def gov(sim: SimServer, tmp_path: Path) -> Iterator[Governor]:
    sim.clear_faults()
    sim.stats.reset()
    governor = Governor(sim_policy(sim.url, str(tmp_path), features=CACHED_FEATURES,
                                   plans=PLANS, cache=CACHE))
    yield governor
    governor.close()


def rows(gov: Governor) -> list[CallRecord]:
    gov.flush()
    return list(gov.submit(gov.runtime().ledger.records()).result())


def _openai(gov: Governor, sim: SimServer, feature: str) -> Any:
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-sim", max_retries=0)
    return gov.openai(client, feature=feature, user="ann", plan="pro")


def _anthropic(gov: Governor, sim: SimServer, feature: str) -> Any:
    client = anthropic.Anthropic(base_url=sim.url, api_key="sk-sim", max_retries=0)
    return gov.anthropic(client, feature=feature, user="ann", plan="pro")


def _assert_ok_then_cached(gov: Governor) -> None:
    first, second = rows(gov)
    assert first.outcome is Outcome.OK and second.outcome is Outcome.CACHED
    assert second.tokens_saved == first.input_tokens + first.output_tokens > 0
    assert (second.input_tokens, second.output_tokens, second.cost_nusd) == (0, 0, 0)


def test_a_second_identical_openai_call_is_served_from_the_cache(
        gov: Governor, sim: SimServer) -> None:
    client = _openai(gov, sim, "faq")
    first = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    second = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert sim.stats.count("chat/completions") == 1
    assert isinstance(second, ChatCompletion)  # the SDK's own type, not a dict
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage is not None and second.usage.total_tokens == first.usage.total_tokens
    _assert_ok_then_cached(gov)


def test_a_second_identical_anthropic_call_is_served_from_the_cache(
        gov: Governor, sim: SimServer) -> None:
    client = _anthropic(gov, sim, "faq-claude")
    first = client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=HI)
    second = client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=HI)
    assert sim.stats.count("messages") == 1
    assert isinstance(second, Message)
    assert second.content[0].text == first.content[0].text  # type: ignore[union-attr]
    _assert_ok_then_cached(gov)


def test_a_changed_body_misses(gov: Governor, sim: SimServer) -> None:
    client = _openai(gov, sim, "faq")
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, temperature=0.5)
    assert sim.stats.count("chat/completions") == 2
    assert [r.outcome for r in rows(gov)] == [Outcome.OK, Outcome.OK]


def test_a_stream_with_the_same_body_reaches_the_provider(
        gov: Governor, sim: SimServer) -> None:
    client = _openai(gov, sim, "faq")
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HI,
                                                 stream=True))
    assert chunks and sim.stats.count("chat/completions") == 2
    assert [r.outcome for r in rows(gov)] == [Outcome.OK, Outcome.OK]


@pytest.mark.parametrize("make", [_openai, _anthropic], ids=["openai", "anthropic"])
def test_a_feature_without_cache_never_hits(gov: Governor, sim: SimServer,
                                            make: Callable[..., Any]) -> None:
    client = make(gov, sim, "chat" if make is _openai else "claude")
    for _ in range(2):
        if make is _openai:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        else:
            client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=HI)
    assert sim.stats.total == 2
    assert {r.outcome for r in rows(gov)} == {Outcome.OK}


async def test_the_async_client_is_served_from_the_cache_too(
        gov: Governor, sim: SimServer) -> None:
    client = gov.openai(openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="sk-sim",
                                           max_retries=0), feature="faq", user="ann",
                        plan="pro")
    first = await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    second = await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert sim.stats.count("chat/completions") == 1
    assert isinstance(second, ChatCompletion) and second.id == first.id
    _assert_ok_then_cached(gov)
