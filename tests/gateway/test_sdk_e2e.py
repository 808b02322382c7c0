"""The official SDKs, sync and async, streaming and not, through the gateway to the
simulator: the usage the ledger records equals the usage the provider reported."""

from __future__ import annotations

import anthropic
import openai
import orjson

from tallygate.types import Outcome
from tests.support.gateway import RunningGateway, http

# The upstream transport is exercised here: run on both (tests/support/fixtures.py).
BOTH_TRANSPORTS = True

CHAT = {"X-Tallygate-Feature": "chat"}
CLAUDE = {"X-Tallygate-Feature": "claude"}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


def _oa(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                         default_headers=CHAT)


def _an(gw: RunningGateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0,
                               default_headers=CLAUDE)


def test_openai_chat_sync_usage_matches_ledger(gateway: RunningGateway) -> None:
    key = gateway.create_key("alice", "pro")
    raw = _oa(gateway, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES)
    reply = raw.parse()
    assert raw.headers["x-tallygate-request-id"].startswith("tg-")
    assert int(raw.headers["x-ratelimit-limit-tokens"]) == 1_000_000
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 1_000_000 - reply.usage.total_tokens
    [row] = gateway.rows()
    assert row.request_id == raw.headers["x-tallygate-request-id"]
    assert (row.input_tokens, row.output_tokens) == (
        reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert row.outcome == Outcome.OK and row.user == "alice" and row.feature == "chat"
    assert row.exact and not row.stream and row.cost_nusd > 0


def test_openai_stream_usage_settled_and_chunk_stripped(gateway: RunningGateway) -> None:
    key = gateway.create_key("alice", "pro")
    chunks = list(_oa(gateway, key).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True))
    # The client did not ask for include_usage: the usage chunk is not forwarded.
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    [row] = gateway.rows()
    assert row.stream and row.exact and row.output_tokens > 0 and row.ttft_ms is not None


def test_openai_stream_usage_kept_when_asked(gateway: RunningGateway) -> None:
    key = gateway.create_key("alice", "pro")
    chunks = list(_oa(gateway, key).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    [row] = gateway.rows()
    assert (row.input_tokens, row.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)


async def test_openai_async_stream_and_plain(gateway: RunningGateway) -> None:
    key = gateway.create_key("bob", "pro")
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0,
                                default_headers=CHAT)
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    await client.close()
    rows = sorted(gateway.rows(), key=lambda r: r.stream)
    assert rows[0].output_tokens == reply.usage.completion_tokens
    assert rows[1].output_tokens == chunks[-1].usage.completion_tokens


def test_anthropic_sync_and_stream(gateway: RunningGateway) -> None:
    key = gateway.create_key("carol", "pro")
    client = _an(gateway, key)
    msg = client.messages.create(model="claude-haiku-4-5", max_tokens=64,
                                 messages=[{"role": "user", "content": "Hi"}])
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=64,
                                messages=[{"role": "user", "content": "Hi"}]) as stream:
        final = stream.get_final_message()
    rows = sorted(gateway.rows(), key=lambda r: r.stream)
    for row, usage in zip(rows, (msg.usage, final.usage), strict=True):
        assert row.input_tokens == usage.input_tokens
        assert row.output_tokens == usage.output_tokens
        assert row.provider == "anthropic" and row.exact


async def test_anthropic_async_with_x_api_key(gateway: RunningGateway) -> None:
    key = gateway.create_key("carol", "pro")
    # anthropic SDK 2.x sends Bearer; 0.x sent x-api-key: the gateway takes both.
    client = anthropic.AsyncAnthropic(base_url=gateway.url, auth_token=None, api_key=None,
                                      max_retries=0,
                                      default_headers={**CLAUDE, "x-api-key": key})
    msg = await client.messages.create(model="claude-haiku-4-5", max_tokens=32,
                                       messages=[{"role": "user", "content": "Hi"}])
    await client.close()
    [row] = gateway.rows()
    assert row.output_tokens == msg.usage.output_tokens


def test_responses_and_embeddings(gateway: RunningGateway) -> None:
    key = gateway.create_key("dave", "pro")
    client = _oa(gateway, key)
    resp = client.responses.create(model="gpt-4o-mini", input="Say hi")
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a b c", "d e"])
    rows = {r.model_used: r for r in gateway.rows()}
    assert rows["gpt-4o-mini"].output_tokens == resp.usage.output_tokens
    assert rows["text-embedding-3-small"].input_tokens == emb.usage.prompt_tokens
    assert rows["text-embedding-3-small"].output_tokens == 0


def test_max_output_clamped_to_feature_cap(gateway: RunningGateway, sim) -> None:
    key = gateway.create_key("erin", "pro")
    _oa(gateway, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                              max_tokens=5000)
    _, body = sim.stats.bodies[-1]
    assert body["max_tokens"] == 100
    [row] = gateway.rows()
    assert '"reason":"feature_cap"' in (row.detail or "")


def test_tier_and_step_routing(make_gateway) -> None:
    gw = make_gateway(tiers={"small": "gpt-4o-mini", "large": "gpt-4o"},
                      routing={"steps": {"planning": "large", "verification": "small"}})
    key = gw.create_key("frank", "pro")
    client = _oa(gw, key)
    a = client.chat.completions.create(model="tier:small", messages=MESSAGES)
    b = client.chat.completions.create(model="auto", messages=MESSAGES,
                                       extra_headers={"X-Tallygate-Step": "planning"})
    assert a.model.startswith("gpt-4o-mini") and b.model.startswith("gpt-4o")
    steps = {r.step: r.model_used for r in gw.rows()}
    assert steps == {None: "gpt-4o-mini", "planning": "gpt-4o"}


def test_trim_drops_oldest_turns(gateway: RunningGateway, sim) -> None:
    key = gateway.create_key("gina", "pro")
    long_turn = "word " * 900
    messages = [{"role": "system", "content": "sys"}]
    for i in range(6):
        messages += [{"role": "user", "content": f"{i} {long_turn}"},
                     {"role": "assistant", "content": f"ok {i}"}]
    messages.append({"role": "user", "content": "latest question"})
    _oa(gateway, key).chat.completions.create(model="gpt-4o-mini", messages=messages)
    _, sent = sim.stats.bodies[-1]
    assert sent["messages"][0]["content"] == "sys"
    assert sent["messages"][-1]["content"] == "latest question"
    assert len(sent["messages"]) < len(messages)
    [row] = gateway.rows()
    assert row.outcome == Outcome.TRIMMED and row.trimmed_tokens > 0
    assert row.input_tokens <= 4000


def test_models_usage_and_health(gateway: RunningGateway) -> None:
    key = gateway.create_key("hank", "free", models=("gpt-4o-mini",))
    ids = [m.id for m in _oa(gateway, key).models.list()]
    assert ids == ["gpt-4o-mini"]
    status, _, body = http("GET", gateway.url + "/v1/usage",
                           headers={"Authorization": f"Bearer {key}"})
    assert status == 200
    limits = {item["key"]: item for item in orjson.loads(body)["limits"]}
    assert limits["user:hank:tokens:day"]["limit"] == 2000
    assert limits["user:hank:tokens:day"]["remaining"] == 2000
    assert orjson.loads(http("GET", gateway.url + "/healthz")[2]) == {"status": "ok"}


def test_count_tokens_route(gateway: RunningGateway) -> None:
    key = gateway.create_key("ivy", "pro")
    result = _an(gateway, key).messages.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "Hello, world"}])
    assert result.input_tokens > 0
    assert gateway.rows() == []  # counting is free: no call, no row


def test_upstream_request_headers(gateway: RunningGateway, sim) -> None:
    key = gateway.create_key("olga", "pro")
    _oa(gateway, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    sent = {k.lower(): v for k, v in sim.stats.headers[-1].items()}
    # The provider's key, never the client's virtual key; an uncompressed body that can
    # be relayed as is and parsed for usage.
    assert sent["authorization"] == "Bearer sk-sim"
    assert key not in " ".join(sent.values())
    assert sent["accept-encoding"] == "identity"
