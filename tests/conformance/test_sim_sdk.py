"""The official openai and anthropic SDKs pointed straight at the simulated provider:
well-formed objects with usage, and each injected fault raises the SDK's matching error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tallygate.core import bpe
from tallygate.sim import SimConfig, SimServer, start_sim

REPLY = 16
MSGS = [{"role": "user", "content": "Say something nice about budgets."}]


class SimThread:
    """The sim on its own event loop in a thread, so sync SDK clients can call it."""

    def __init__(self, config: SimConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: SimServer = asyncio.run_coroutine_threadsafe(
            start_sim(config=config), self.loop
        ).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    config = SimConfig(reply_tokens=REPLY, context_windows={"gpt-4o-small-window": 40})
    runner = SimThread(config)
    yield runner.server
    runner.close()


@pytest.fixture
def oai(sim: SimServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def ant(sim: SimServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)
    yield client
    client.close()


def o200k(text: str) -> int:
    return len(bpe.get_encoding("o200k_base").encode(text))


# --------------------------------------------------------------------------- openai


def test_openai_chat_sync(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert resp.object == "chat.completion"
    text = resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == REPLY == o200k(text)
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + REPLY


def test_openai_chat_capped_and_n(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, max_completion_tokens=5, n=3
    )
    assert [c.finish_reason for c in resp.choices] == ["length"] * 3
    assert all(o200k(c.message.content) == 5 for c in resp.choices)
    assert resp.usage.completion_tokens == 15


def test_openai_chat_stream_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == REPLY == o200k(text)
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_chat_stream_without_usage(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_openai_async_chat_and_stream(sim: SimServer) -> None:
    client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="sk", max_retries=0)
    try:
        resp = await client.chat.completions.create(model="gpt-4o", messages=MSGS)
        assert resp.usage.completion_tokens == REPLY
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        assert usage is not None and usage.prompt_tokens == resp.usage.prompt_tokens
    finally:
        await client.close()


def test_openai_responses(oai: openai.OpenAI) -> None:
    resp = oai.responses.create(model="gpt-4o-mini", input="Hello there")
    assert resp.status == "completed"
    assert resp.usage.output_tokens == REPLY == o200k(resp.output_text)
    capped = oai.responses.create(model="gpt-4o-mini", input="Hello", max_output_tokens=4)
    assert capped.status == "incomplete"
    assert capped.incomplete_details.reason == "max_output_tokens"
    assert capped.usage.output_tokens == 4


def test_openai_responses_stream(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="gpt-4o-mini", input="Hello", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].response.usage.output_tokens == REPLY == o200k(text)
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_openai_embeddings_and_models(oai: openai.OpenAI) -> None:
    emb = oai.embeddings.create(model="text-embedding-3-small", input=["a b c", "d e"])
    assert [d.index for d in emb.data] == [0, 1]
    assert len(emb.data[0].embedding) == 16
    assert emb.usage.prompt_tokens == emb.usage.total_tokens > 0
    floats = oai.embeddings.create(
        model="text-embedding-3-small", input="x", encoding_format="float", dimensions=8
    )
    assert len(floats.data[0].embedding) == 8
    ids = [m.id for m in oai.models.list()]
    assert "gpt-4o-mini" in ids and "claude-haiku-4-5" in ids


# --------------------------------------------------------------------------- anthropic


def test_anthropic_messages_sync(ant: anthropic.Anthropic) -> None:
    msg = ant.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=MSGS)
    assert msg.type == "message" and msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == REPLY
    assert msg.usage.input_tokens > 0
    capped = ant.messages.create(model="claude-haiku-4-5", max_tokens=3, messages=MSGS)
    assert capped.stop_reason == "max_tokens" and capped.usage.output_tokens == 3
    counted = ant.messages.count_tokens(model="claude-haiku-4-5", messages=MSGS)
    assert counted.input_tokens == msg.usage.input_tokens


def test_anthropic_stream_sync(ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=MSGS) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.content[0].text == text
    assert final.usage.output_tokens == REPLY
    assert final.usage.input_tokens > 0


async def test_anthropic_async(sim: SimServer) -> None:
    client = anthropic.AsyncAnthropic(base_url=sim.url, api_key="k", max_retries=0)
    try:
        msg = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=50, messages=MSGS, system="Be brief."
        )
        assert msg.usage.output_tokens == REPLY
        async with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=50, messages=MSGS, system="Be brief."
        ) as stream:
            final = await stream.get_final_message()
        assert final.usage.output_tokens == REPLY
        assert final.usage.input_tokens == msg.usage.input_tokens
        models = await client.models.list()
        assert "claude-haiku-4-5" in [m.id for m in models.data]
    finally:
        await client.close()


def test_anthropic_cached_and_thinking_usage(ant: anthropic.Anthropic) -> None:
    msg = ant.messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=MSGS,
        extra_headers={"x-sim-cached-tokens": "3"},
    )
    assert msg.usage.cache_read_input_tokens == 3


# --------------------------------------------------------------------------- faults

def _fault(name: str) -> dict[str, str]:
    return {"x-sim-fault": name}


def test_openai_faults(oai: openai.OpenAI, sim: SimServer) -> None:
    call = oai.chat.completions.create
    with pytest.raises(openai.RateLimitError) as rl:
        call(model="gpt-4o-mini", messages=MSGS, extra_headers=_fault("429:2"))
    assert rl.value.response.headers["retry-after"] == "2"
    assert rl.value.response.headers["retry-after-ms"] == "2000"
    assert rl.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        call(model="gpt-4o-mini", messages=MSGS, extra_headers=_fault("500"))
    with pytest.raises(openai.InternalServerError) as over:
        call(model="gpt-4o-mini", messages=MSGS, extra_headers=_fault("529"))
    assert over.value.status_code == 529
    with pytest.raises(openai.BadRequestError) as ctx:
        call(model="gpt-4o-mini", messages=MSGS, extra_headers=_fault("context_length_exceeded"))
    assert ctx.value.code == "context_length_exceeded"
    assert ctx.value.param == "messages"
    with pytest.raises(openai.APITimeoutError):
        call(model="gpt-4o-mini", messages=MSGS, extra_headers=_fault("timeout:3"), timeout=0.3)
    with pytest.raises(openai.APIConnectionError):
        call(model="gpt-4o-mini", messages=MSGS, extra_headers=_fault("cut"))


def test_openai_stream_cut(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, stream=True, extra_headers=_fault("cut:3")
    )
    got = []
    with pytest.raises(Exception) as exc:
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 3
    assert not isinstance(exc.value, AssertionError)


def test_openai_real_context_window(oai: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "budget " * 60}]
    with pytest.raises(openai.BadRequestError) as ctx:
        oai.chat.completions.create(model="gpt-4o-small-window", messages=long)
    assert ctx.value.code == "context_length_exceeded"
    assert "maximum context length is 40 tokens" in ctx.value.message


def test_anthropic_faults(ant: anthropic.Anthropic) -> None:
    def call(fault: str, **kw: object) -> object:
        return ant.messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=MSGS,
            extra_headers=_fault(fault), **kw,
        )

    with pytest.raises(anthropic.RateLimitError) as rl:
        call("429")
    assert rl.value.response.headers["retry-after"] == "1"
    assert rl.value.response.headers["request-id"].startswith("req_")
    with pytest.raises(anthropic.InternalServerError):
        call("500")
    with pytest.raises(anthropic.OverloadedError):
        call("529")
    with pytest.raises(anthropic.BadRequestError) as ctx:
        call("context_length_exceeded")
    assert "prompt is too long" in ctx.value.message
    with pytest.raises(anthropic.APITimeoutError):
        call("timeout:3", timeout=0.3)
    with pytest.raises(anthropic.APIConnectionError):
        call("cut")


def test_anthropic_stream_cut(ant: anthropic.Anthropic) -> None:
    got: list[str] = []
    with pytest.raises(Exception) as exc, ant.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=MSGS,
        extra_headers=_fault("cut:5"),
    ) as stream:
        got.extend(stream.text_stream)
    assert len(got) == 2  # start, block start, ping, then two deltas before the cut
    assert not isinstance(exc.value, AssertionError)


def test_queued_faults_and_counters(sim: SimServer, oai: openai.OpenAI) -> None:
    before = sim.stats.count("chat/completions", "gpt-4.1")
    sim.push_faults("500", "429:0.1")
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="gpt-4.1", messages=MSGS)
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="gpt-4.1", messages=MSGS)
    ok = oai.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert ok.usage.completion_tokens == REPLY
    assert sim.stats.count("chat/completions", "gpt-4.1") == before + 3
    assert sim.stats.last_body("chat/completions")["model"] == "gpt-4.1"


def test_bad_input_is_a_protocol_error(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=-1)
    assert bad.value.param == "max_tokens"
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(model="claude-haiku-4-5", max_tokens=0, messages=MSGS)
