"""A budget refusal whose reset is far away ends every kind of client at once, with the
limit named: the OpenAI SDK and the Anthropic SDK (they obey `x-should-retry: false`), and
a Codex-style client (it obeys only Retry-After and `insufficient_quota`). Short waits
keep Retry-After, and the policy's `refusals.retry_within` moves the line."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import anthropic
import openai
import pytest

from tallygate.sim import SimServer
from tallygate.types import Outcome
from tests.support.agent_clients import codex_style_post
from tests.support.gateway import RunningGateway

DAILY = {"tiny": {"tokens_per_day": 150}}  # a plan
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(autouse=True)
def long_replies(sim: SimServer) -> Iterator[None]:
    """100-token replies: one call spends ~110 of the 150-token daily limit."""
    sim.config.reply_tokens = 100
    yield
    sim.config.reply_tokens = 16


def _spend_most(gw: RunningGateway, key: str, protocol: str) -> None:
    if protocol == "anthropic":
        anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0).messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=HELLO,
            extra_headers={"X-Tallygate-Feature": "claude"})
    else:
        openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0).responses.create(
            model="gpt-4o-mini", input="Hello", max_output_tokens=100,
            extra_headers={"X-Tallygate-Feature": "chat"})


def _rejected(gw: RunningGateway) -> list:
    return [r for r in gw.rows() if r.outcome == Outcome.REJECTED]


def test_openai_sdk_stops_at_once(make_gateway: Callable[..., RunningGateway]) -> None:
    gw = make_gateway(plans=DAILY)
    key = gw.create_key("oa", "tiny")
    _spend_most(gw, key, "openai")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key,  # default retries (2)
                           default_headers={"X-Tallygate-Feature": "chat"})
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=100)
    assert time.monotonic() - started < 1.0
    err = info.value
    assert (err.type, err.code) == ("insufficient_quota", "budget_exceeded")
    assert "daily token limit of user 'oa'" in err.message
    assert "will not clear soon" in err.message
    headers = err.response.headers
    assert "retry-after" not in headers and headers["x-should-retry"] == "false"
    assert headers["x-ratelimit-limit-tokens"] == "150"
    assert "h" in headers["x-ratelimit-reset-tokens"]  # hours to the daily reset
    assert len(_rejected(gw)) == 1  # the SDK did not retry


@pytest.mark.parametrize("stream", [True, False])
def test_codex_style_client_stops_at_once(make_gateway: Callable[..., RunningGateway],
                                          stream: bool) -> None:
    gw = make_gateway(plans=DAILY)
    key = gw.create_key("cx", "tiny")
    _spend_most(gw, key, "openai")
    body = {"model": "gpt-4o-mini", "stream": stream, "max_output_tokens": 100,
            "input": [{"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "Hello"}]}]}
    started = time.monotonic()
    result = codex_style_post(gw.url + "/v1/responses", body,
                              {"authorization": f"Bearer {key}",
                               "x-tallygate-feature": "chat", "session-id": "s-1"})
    assert time.monotonic() - started < 1.0
    assert (result.status, result.attempts, result.slept) == (429, 1, [])
    assert result.error["type"] == "insufficient_quota"
    assert "daily token limit of user 'cx'" in result.error["message"]


def test_anthropic_sdk_stops_at_once(make_gateway: Callable[..., RunningGateway]) -> None:
    gw = make_gateway(plans=DAILY)
    key = gw.create_key("an", "tiny")
    _spend_most(gw, key, "anthropic")
    client = anthropic.Anthropic(base_url=gw.url, api_key=key,  # default retries (2)
                                 default_headers={"X-Tallygate-Feature": "claude"})
    started = time.monotonic()
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=HELLO)
    assert time.monotonic() - started < 1.0
    body = info.value.body
    assert body["error"]["type"] == "rate_limit_error"
    assert "daily token limit of user 'an'" in body["error"]["message"]
    assert "will not clear soon" in body["error"]["message"]
    headers = info.value.response.headers
    assert "retry-after" not in headers and headers["x-should-retry"] == "false"
    assert len(_rejected(gw)) == 1


def test_short_wait_keeps_retry_after(make_gateway: Callable[..., RunningGateway]) -> None:
    gw = make_gateway(limits={"user": {"requests_per_minute": 1}})
    key = gw.create_key("fast", "pro")
    body = {"model": "gpt-4o-mini", "input": "Hello"}
    headers = {"authorization": f"Bearer {key}", "x-tallygate-feature": "chat"}
    assert codex_style_post(gw.url + "/v1/responses", body, headers).status == 200
    waits: list[float] = []
    result = codex_style_post(gw.url + "/v1/responses", body, headers, max_retries=1,
                              sleep=waits.append)
    assert result.status == 429 and result.error["type"] == "requests"
    assert result.error["code"] == "rate_limited"
    assert 1 <= waits[0] <= 60  # it waited as told, then tried once more


def test_retry_within_is_policy(make_gateway: Callable[..., RunningGateway]) -> None:
    gw = make_gateway(plans=DAILY, refusals={"retry_within": "2d"})
    key = gw.create_key("patient", "tiny")
    _spend_most(gw, key, "openai")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                           default_headers={"X-Tallygate-Feature": "chat"})
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=100)
    assert info.value.type == "tokens" and info.value.code == "budget_exceeded"
    assert int(info.value.response.headers["retry-after"]) > 60
    assert "x-should-retry" not in info.value.response.headers
