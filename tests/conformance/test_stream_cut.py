"""A stream ended early by tallygate (providers/stream_cut.py) is a valid length stop:
the OpenAI events validate against the vendored OpenAPI subset, and the official
`openai` and `anthropic` SDKs, reading it from a loopback server, parse it to the end
and report a truncated answer holding exactly the text that was sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tallygate.providers import anthropic as ant
from tallygate.providers import openai as oai
from tallygate.providers.common import StreamTap, parse_event
from tallygate.sim import SimConfig, create_sim_app
from tallygate.types import Usage
from tests.conformance.test_openapi import check, stream_event_schemas

NOW = 1_718_000_000.0
HELLO = [{"role": "user", "content": "Tell me about token budgets."}]
USAGE = Usage(input_tokens=17, output_tokens=5, cached_tokens=3)


@pytest.fixture
async def sim() -> AsyncIterator[TestClient]:
    app = create_sim_app(SimConfig(reply_tokens=24, stream_chunk_tokens=2))
    async with TestClient(TestServer(app)) as client:
        yield client


async def upstream(sim: TestClient, path: str, body: dict[str, Any]) -> bytes:
    resp = await sim.post(path, data=orjson.dumps(body),
                          headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert resp.status == 200
    return await resp.read()


def events_of(raw: bytes) -> list[tuple[str | None, str]]:
    parsed = [parse_event(part + b"\n\n") for part in raw.split(b"\n\n") if part.strip()]
    return [(e.event, e.data) for e in parsed if e.data is not None]


def cut(tap: StreamTap, raw: bytes, at: int) -> tuple[bytes, bytes]:
    """Feed the first `at` bytes in ragged chunks; (what was forwarded, the ending)."""
    sent = bytearray()
    for start in range(0, at, 37):  # chunk edges fall anywhere, mid-event included
        sent += tap.feed(raw[start:min(at, start + 37)])
    return bytes(sent), tap.cut_stream(tap.usage_so_far(input_tokens=USAGE.input_tokens),
                                       now=NOW)


def cut_points(raw: bytes) -> list[int]:
    ends = [i + 2 for i in range(len(raw)) if raw.startswith(b"\n\n", i)]
    return sorted({0, 1, 50, ends[0], ends[2] - 5, ends[len(ends) // 2],
                   ends[len(ends) // 2] + 9, ends[-3], ends[-2]})


async def serve(body: bytes) -> TestServer:
    """A loopback server answering any POST with `body` as an SSE stream."""
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server = TestServer(app)
    await server.start_server()
    return server


def sent_text(raw: bytes, kind: str) -> str:
    """The text deltas among the forwarded events."""
    out = []
    for _, data in events_of(raw):
        if not data.startswith("{"):
            continue
        obj = orjson.loads(data)
        if kind == "chat":
            out += [c["delta"].get("content") or "" for c in obj.get("choices", [])
                    if c.get("index") == 0]
        elif obj.get("type") in ("response.output_text.delta", "content_block_delta"):
            out.append(obj["delta"] if kind == "responses" else obj["delta"]["text"])
    return "".join(out)


# --------------------------------------------------------------------------- chat


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("n", [1, 2])
async def test_chat_stream_cut_anywhere(sim: TestClient, include_usage: bool, n: int) -> None:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True, "n": n,
                            "stream_options": {"include_usage": True}}  # as tallygate asks
    raw = await upstream(sim, "/v1/chat/completions", body)
    for at in cut_points(raw):
        tap = oai.stream_tap("chat/completions", client_wants_usage=include_usage,
                             model="gpt-4o-mini", cuttable=True, choices=n)
        sent, ending = cut(tap, raw, at)
        stream = events_of(sent + ending)
        assert stream[-1] == (None, "[DONE]")
        chunks = [orjson.loads(data) for _, data in stream[:-1]]
        for chunk in chunks:
            check("CreateChatCompletionStreamResponse", chunk)
        finished = {c["index"]: c["finish_reason"] for chunk in chunks
                    for c in chunk["choices"] if c["finish_reason"]}
        ended = {c["index"]: c["finish_reason"] for _, data in events_of(sent)
                 if data.startswith("{") for c in orjson.loads(data)["choices"]
                 if c["finish_reason"]}  # (a choice that ended keeps its reason)
        assert finished == {i: ended.get(i, "length") for i in range(n)}, at
        assert (chunks[-1]["choices"] == []) is include_usage
        assert sum(not c["choices"] for c in chunks) == include_usage  # one usage chunk
        if include_usage and b'"choices":[],' not in sent:  # (else the provider's)
            assert chunks[-1]["usage"]["prompt_tokens"] == USAGE.input_tokens
        assert len({c["id"] for c in chunks}) == 1  # one completion, start to end
        await _openai_reads_chat(sent + ending, sent_text(sent, "chat"),
                                 [finished[i] for i in range(n)])


async def _openai_reads_chat(body: bytes, text: str, reasons: list[str]) -> None:
    server = await serve(body)
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k",
                                max_retries=0)
    try:
        async with client.chat.completions.stream(model="gpt-4o-mini",
                                                  messages=HELLO) as stream:  # type: ignore[arg-type]
            try:
                final: Any = await stream.get_final_completion()
            except openai.LengthFinishReasonError as length:  # as for any provider's
                final = length.completion  # length stop: with what it accumulated
        assert [c.finish_reason for c in final.choices] == reasons
        assert (final.choices[0].message.content or "") == text
        raw = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO,  # type: ignore[arg-type]
                                                   stream=True)
        assert [chunk async for chunk in raw]
    finally:
        await client.close()
        await server.close()


# --------------------------------------------------------------------------- responses


async def test_responses_stream_cut_anywhere(sim: TestClient) -> None:
    raw = await upstream(sim, "/v1/responses",
                         {"model": "gpt-4o-mini", "input": "Hi", "stream": True})
    names = stream_event_schemas()
    for at in cut_points(raw):
        tap = oai.stream_tap("responses", model="gpt-4o-mini", cuttable=True)
        sent, ending = cut(tap, raw, at)
        stream = [orjson.loads(data) for _, data in events_of(sent + ending)]
        for obj in stream:
            check(names[obj["type"]], obj)
        assert [e["sequence_number"] for e in stream] == list(range(len(stream)))
        last = stream[-1]
        assert last["type"] == "response.incomplete", at
        assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
        assert last["response"]["usage"]["input_tokens"] == USAGE.input_tokens
        text = sent_text(sent, "responses")
        if at > 0:
            [message] = last["response"]["output"] or [{"content": [{"text": ""}]}]
            assert message["content"][0]["text"] == text
        await _openai_reads_responses(sent + ending, text)


async def _openai_reads_responses(body: bytes, text: str) -> None:
    server = await serve(body)
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k",
                                max_retries=0)
    try:
        async with client.responses.stream(model="gpt-4o-mini", input="Hi") as stream:
            seen = [event async for event in stream]
        assert seen[-1].type == "response.incomplete"
        assert seen[-1].response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
        assert seen[-1].response.output_text == text
        raw = await client.responses.create(model="gpt-4o-mini", input="Hi", stream=True)
        assert [event.type async for event in raw][-1] == "response.incomplete"
    finally:
        await client.close()
        await server.close()


def _responses_events(items: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> bytes:
    """A hand-made Responses stream: created, then per item its added/delta events."""
    seq = iter(range(10_000))
    response = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress",
                "error": None, "incomplete_details": None, "instructions": None,
                "model": "gpt-5", "output": [], "tools": [], "tool_choice": "auto",
                "parallel_tool_calls": True, "metadata": {}, "temperature": None,
                "top_p": None}
    out = [{"type": "response.created", "response": response}]
    for at, (item, events) in enumerate(items):
        out.append({"type": "response.output_item.added", "output_index": at, "item": item})
        out += [{"output_index": at, "item_id": item.get("id", ""), **e} for e in events]
    return b"".join(f"event: {e['type']}\ndata: ".encode()
                    + orjson.dumps({**e, "sequence_number": next(seq)}) + b"\n\n"
                    for e in out)


def test_responses_cut_closes_reasoning_message_and_tool_call_items() -> None:
    reasoning = ({"id": "rs_1", "type": "reasoning", "summary": []}, [
        {"type": "response.reasoning_summary_part.added", "summary_index": 0,
         "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", "summary_index": 0,
         "delta": "Thinking"}])
    message = ({"id": "msg_1", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}, [
        {"type": "response.content_part.added", "content_index": 0,
         "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}},
        {"type": "response.output_text.delta", "content_index": 0, "delta": "Hel",
         "logprobs": []},
        {"type": "response.output_text.delta", "content_index": 0, "delta": "lo",
         "logprobs": []}])
    call = ({"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "grep",
             "arguments": "", "status": "in_progress"}, [
        {"type": "response.function_call_arguments.delta", "delta": '{"pattern": "to'}])
    custom = ({"id": "ctc_1", "type": "custom_tool_call", "call_id": "call_2",
               "name": "exec", "input": ""}, [
        {"type": "response.custom_tool_call_input.delta", "delta": "ls -"}])
    raw = _responses_events([reasoning, message, call, custom])
    tap = oai.stream_tap("responses", model="gpt-5", cuttable=True)
    sent = tap.feed(raw)
    ending = tap.cut_stream(USAGE, now=NOW)
    names = stream_event_schemas()
    stream = [orjson.loads(data) for _, data in events_of(sent + ending)]
    for obj in stream:
        check(names[obj["type"]], obj)
    tail = [e["type"] for e in orjson.loads(b"[" + b",".join(
        d.encode() for _, d in events_of(ending)) + b"]")]
    assert tail == [
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.custom_tool_call_input.done", "response.output_item.done",
        "response.incomplete"]
    output = stream[-1]["response"]["output"]
    assert output[0]["summary"] == [{"type": "summary_text", "text": "Thinking"}]
    assert output[1]["content"][0]["text"] == "Hello" and output[1]["status"] == "incomplete"
    assert output[2]["arguments"] == '{"pattern": "to'
    assert output[3]["input"] == "ls -" and "status" not in output[3]
    assert [e["sequence_number"] for e in stream] == list(range(len(stream)))


def test_a_stream_cut_before_its_first_event_is_a_whole_stream() -> None:
    names = stream_event_schemas()
    tap = oai.stream_tap("responses", model="gpt-4o", cuttable=True, cut_id="abc")
    stream = [orjson.loads(d) for _, d in events_of(tap.cut_stream(USAGE, now=NOW))]
    assert [e["type"] for e in stream] == ["response.created", "response.incomplete"]
    for obj in stream:
        check(names[obj["type"]], obj)
    assert stream[1]["response"]["id"] == "resp_abc"
    chat = oai.stream_tap("chat/completions", model="gpt-4o", cuttable=True, choices=2)
    chunks = events_of(chat.cut_stream(USAGE, now=NOW))
    for _, data in chunks[:-1]:
        check("CreateChatCompletionStreamResponse", orjson.loads(data))
    assert len(chunks) == 5  # the roles, two length stops, the usage, [DONE]


def test_a_tap_without_a_cut_cannot_cut() -> None:
    with pytest.raises(RuntimeError, match="without a cut"):
        oai.stream_tap("responses").cut_stream(USAGE, now=NOW)


# --------------------------------------------------------------------------- anthropic


async def test_messages_stream_cut_anywhere(sim: TestClient) -> None:
    raw = await upstream(sim, "/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 200,
                                                "messages": HELLO, "stream": True})
    for at in cut_points(raw):
        tap = ant.stream_tap(model="claude-haiku-4-5", cuttable=True)
        sent, ending = cut(tap, raw, at)
        stream = events_of(sent + ending)
        kinds = [name for name, _ in stream]
        assert kinds[-2:] == ["message_delta", "message_stop"], at
        assert kinds.count("content_block_start") == kinds.count("content_block_stop")
        delta = orjson.loads(stream[-2][1])
        stop = "end_turn" if b"message_delta" in sent else "max_tokens"  # (sent: kept)
        assert delta["delta"]["stop_reason"] == stop
        await _anthropic_reads(sent + ending, sent_text(sent, "messages"), stop,
                               delta["usage"]["output_tokens"])


async def _anthropic_reads(body: bytes, text: str, stop: str, output_tokens: int) -> None:
    server = await serve(body)
    client = anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="k",
                                      max_retries=0)
    try:
        async with client.messages.stream(model="claude-haiku-4-5", max_tokens=200,
                                          messages=HELLO) as stream:  # type: ignore[arg-type]
            final = await stream.get_final_message()
        assert final.stop_reason == stop
        assert "".join(b.text for b in final.content if b.type == "text") == text
        assert final.usage.output_tokens == output_tokens
    finally:
        await client.close()
        await server.close()


def test_messages_cut_closes_an_open_tool_input_block() -> None:
    def event(kind: str, obj: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **obj}) + b"\n\n"

    raw = (event("message_start", {"message": {
               "id": "msg_1", "type": "message", "role": "assistant", "content": [],
               "model": "claude-sonnet-4-5", "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": 14, "output_tokens": 1}}})
           + event("content_block_start", {"index": 0, "content_block": {
               "type": "tool_use", "id": "toolu_1", "name": "grep", "input": {}}})
           + event("content_block_delta", {"index": 0, "delta": {
               "type": "input_json_delta", "partial_json": '{"pattern": "bud'}}))
    tap = ant.stream_tap(model="claude-sonnet-4-5", cuttable=True)
    sent = tap.feed(raw)
    kinds = [name for name, _ in events_of(sent + tap.cut_stream(USAGE, now=NOW))]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    fresh = ant.stream_tap(model="claude-sonnet-4-5", cuttable=True)
    whole = events_of(fresh.cut_stream(USAGE, now=NOW))
    assert [name for name, _ in whole] == ["message_start", "message_delta", "message_stop"]
    assert orjson.loads(whole[0][1])["message"]["usage"]["input_tokens"] == 14
