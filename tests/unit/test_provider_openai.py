"""OpenAI adapter: usage parsing, the SSE tap (chunk splits, usage-chunk stripping),
request preparation, error bodies, error classification and validation."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tallygate.errors import InvalidRequest
from tallygate.providers import openai as oai
from tallygate.types import Usage

CHAT_USAGE = {
    "prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 30, "audio_tokens": 0},
}


def _chunk(choices: list, usage: object = None, with_usage: bool = True) -> bytes:
    obj = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
           "choices": choices}
    if with_usage:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _delta(text: str, finish: str | None = None) -> dict:
    return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}


USAGE_EVENT = _chunk([], CHAT_USAGE)
CHAT_STREAM = b"".join([
    _chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
    _chunk([_delta("Hello")]),
    _chunk([_delta(" world")]),
    b": keep-alive comment\n\n",
    _chunk([_delta("", "stop")]),
    USAGE_EVENT,
    b"data: [DONE]\n\n",
])


def feed_all(tap: oai.StreamTap, parts: list[bytes]) -> bytes:
    return b"".join(tap.feed(p) for p in parts) + tap.flush()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# --------------------------------------------------------------------------- usage


def test_usage_from_chat_body_with_cached_and_reasoning() -> None:
    usage = oai.usage_from_body("/v1/chat/completions", {"usage": CHAT_USAGE})
    assert usage == Usage(input_tokens=1117, output_tokens=46, cached_tokens=1024,
                          reasoning_tokens=30)


def test_usage_from_responses_and_embeddings() -> None:
    body = {"usage": {"input_tokens": 328, "input_tokens_details": {"cached_tokens": 128,
            "cache_write_tokens": 64}, "output_tokens": 52,
            "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 380}}
    assert oai.usage_from_body("responses", body) == Usage(328, 52, 128, 64, 12)
    emb = {"usage": {"prompt_tokens": 9, "total_tokens": 9}}
    assert oai.usage_from_body("embeddings", emb) == Usage(input_tokens=9)


@pytest.mark.parametrize("body", [{}, {"usage": None}, {"usage": "x"}, {"usage": {}}, []])
def test_usage_absent_is_none(body: object) -> None:
    assert oai.usage_from_body("chat/completions", body) is None  # type: ignore[arg-type]


def test_usage_ignores_garbage_numbers() -> None:
    usage = oai.usage_from_body("chat/completions", {"usage": {
        "prompt_tokens": -5, "completion_tokens": True, "prompt_tokens_details": "x"}})
    assert usage == Usage()


# --------------------------------------------------------------------------- chat tap


def test_chat_tap_passthrough_keeps_bytes_and_reads_usage() -> None:
    tap = oai.ChatStreamTap(strip_usage=False)
    assert feed_all(tap, [CHAT_STREAM]) == CHAT_STREAM
    assert tap.usage == Usage(1117, 46, 1024, 0, 30)
    assert tap.done and tap.first_token_seen
    assert tap.generated_text == "Hello world"
    assert tap.finish_reason == "stop"


def test_chat_tap_strips_exactly_the_usage_event() -> None:
    tap = oai.ChatStreamTap(strip_usage=True)
    assert feed_all(tap, [CHAT_STREAM]) == CHAT_STREAM.replace(USAGE_EVENT, b"")
    assert tap.usage is not None and tap.usage.output_tokens == 46


@pytest.mark.parametrize("strip", [False, True])
def test_chat_tap_every_single_split_offset(strip: bool) -> None:
    expected = CHAT_STREAM.replace(USAGE_EVENT, b"") if strip else CHAT_STREAM
    for i in range(len(CHAT_STREAM) + 1):
        tap = oai.ChatStreamTap(strip_usage=strip)
        assert feed_all(tap, [CHAT_STREAM[:i], CHAT_STREAM[i:]]) == expected, i
        assert tap.usage is not None and tap.usage.input_tokens == 1117
        assert tap.done


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(0, len(CHAT_STREAM)), max_size=40), strip=st.booleans(),
       crlf=st.booleans())
def test_chat_tap_any_chunking(cuts: list[int], strip: bool, crlf: bool) -> None:
    stream, usage_event = CHAT_STREAM, USAGE_EVENT
    if crlf:
        stream, usage_event = stream.replace(b"\n", b"\r\n"), usage_event.replace(b"\n", b"\r\n")
    tap = oai.ChatStreamTap(strip_usage=strip)
    out = feed_all(tap, split_at(stream, cuts))
    assert out == (stream.replace(usage_event, b"") if strip else stream)
    assert tap.usage == Usage(1117, 46, 1024, 0, 30)
    assert tap.generated_text == "Hello world"


def test_chat_tap_defers_plain_deltas_until_their_text_is_needed() -> None:
    """After the first token, plain content chunks are parsed only when their text is
    needed; usage, finish_reason, errors and [DONE] are parsed at once."""
    tap = oai.ChatStreamTap(strip_usage=False)
    tap.feed(CHAT_STREAM)
    assert tap._deferred == [_chunk([_delta(" world")])]
    assert tap.usage == Usage(1117, 46, 1024, 0, 30) and tap.finish_reason == "stop"
    assert tap.done
    assert tap.generated_text == "Hello world" and tap._deferred == []
    # Not OpenAI's compact form, or a finish in the same chunk: parsed at once.
    spaced = (b'data: {"choices": [{"index": 0, "delta": {"content": "x"}, '
              b'"finish_reason": null}]}\n\n')
    mixed = _chunk([_delta("y"), {**_delta("z", "stop"), "index": 1}])
    tap = oai.ChatStreamTap(strip_usage=True)
    tap.feed(_chunk([_delta("a")]) + spaced + mixed)
    assert tap._deferred == [] and tap.finish_reason == "stop"


def test_multiline_data_event() -> None:
    raw = b'data: {"choices": [],\ndata: "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
    tap = oai.ChatStreamTap(strip_usage=True)
    assert feed_all(tap, [raw]) == b""
    assert tap.usage == Usage(input_tokens=3, output_tokens=2)


def test_cut_stream_settles_tokens_generated_so_far() -> None:
    tap = oai.ChatStreamTap(model="gpt-4o")
    end = CHAT_STREAM.index(b"\n\n", CHAT_STREAM.index(b" world")) + 2
    tap.feed(CHAT_STREAM[: end + 20])  # the next event is incomplete: not counted
    assert tap.usage is None and not tap.done
    settled = tap.usage_so_far(input_tokens=50, count=lambda text: len(text.split()))
    assert settled == Usage(input_tokens=50, output_tokens=2)


def test_upstream_error_event_is_recorded_and_forwarded() -> None:
    err = oai.stream_error_event("server_error", "boom", type="server_error")
    tap = oai.ChatStreamTap(strip_usage=True)
    assert tap.feed(err) == err
    assert tap.error == {"message": "boom", "type": "server_error", "param": None,
                         "code": "server_error"}


# --------------------------------------------------------------------------- responses tap


def _rev(kind: str, **fields: object) -> bytes:
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps({"type": kind, **fields}) \
        + b"\n\n"


RESP_USAGE = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
              "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 2},
              "total_tokens": 17}
RESP_STREAM = b"".join([
    _rev("response.created", response={"usage": None}),
    _rev("response.output_text.delta", delta="Hi"),
    _rev("response.output_text.delta", delta=" there"),
    _rev("response.completed", response={"status": "completed", "usage": RESP_USAGE}),
])


@pytest.mark.parametrize("final", ["completed", "incomplete", "failed"])
def test_responses_tap(final: str) -> None:
    stream = RESP_STREAM.replace(b"response.completed", f"response.{final}".encode())
    for i in range(0, len(stream) + 1, 7):
        tap = oai.stream_tap("/v1/responses")
        assert feed_all(tap, [stream[:i], stream[i:]]) == stream
        assert tap.usage == Usage(10, 7, 4, 0, 2)
        assert tap.done and tap.generated_text == "Hi there"


def test_responses_tap_defers_text_deltas_after_the_first() -> None:
    tap = oai.stream_tap("/v1/responses")
    tap.feed(RESP_STREAM)
    assert tap._deferred == [_rev("response.output_text.delta", delta=" there")]
    assert tap.usage == Usage(10, 7, 4, 0, 2) and tap.generated_text == "Hi there"


# --------------------------------------------------------------------------- prepare


def test_prepare_keeps_client_field_and_unknowns() -> None:
    body = {"model": "gpt-4o", "messages": [], "max_tokens": 900, "x_custom": {"a": 1}}
    out = orjson.loads(oai.prepare_body("chat/completions", body, max_output=100))
    assert out == {"model": "gpt-4o", "messages": [], "max_tokens": 100, "x_custom": {"a": 1}}
    assert body["max_tokens"] == 900  # the caller's dict is not mutated


def test_prepare_o_series_uses_max_completion_tokens() -> None:
    body = {"model": "gpt-4o", "messages": [], "max_tokens": 900}
    out = orjson.loads(oai.prepare_body("chat/completions", body, model="o4-mini",
                                        max_output=64))
    assert out["model"] == "o4-mini"
    assert out["max_completion_tokens"] == 64 and "max_tokens" not in out
    fresh = orjson.loads(oai.prepare_body("chat/completions", {"model": "gpt-4o"},
                                          max_output=5))
    assert fresh["max_completion_tokens"] == 5


def test_reasoning_requests_cap_with_max_completion_tokens() -> None:
    """Reasoning tokens count inside the output cap: a request that sets a reasoning
    effort gets its cap in the field that includes them (reasoning models refuse
    `max_tokens`), whatever the model's name."""
    body = {"model": "gpt-4.1", "messages": [], "max_tokens": 900, "reasoning_effort": "high"}
    out = orjson.loads(oai.prepare_body("chat/completions", body, max_output=64))
    assert out["max_completion_tokens"] == 64 and "max_tokens" not in out
    assert out["reasoning_effort"] == "high"  # the effort is the client's choice
    plain = {**body, "reasoning_effort": "none"}
    assert orjson.loads(oai.prepare_body("chat/completions", plain, max_output=64)
                        )["max_tokens"] == 64
    sol = {"model": "gpt-6.1-sol", "messages": [], "max_tokens": 900}
    assert "max_completion_tokens" in orjson.loads(
        oai.prepare_body("chat/completions", sol, max_output=64))
    codex = {"model": "gpt-6.1-sol", "input": [], "reasoning": {"effort": "low"}}
    out = orjson.loads(oai.prepare_body("responses", codex, max_output=4096))
    assert out["max_output_tokens"] == 4096 and out["reasoning"] == {"effort": "low"}
    assert oai.reasoning_requested(codex) and not oai.reasoning_requested({"model": "x"})
    assert oai.output_floor("responses", codex)[0] == 16
    assert oai.output_floor("chat/completions", body) is None


def test_prepare_stream_forces_include_usage_and_replaces_messages() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "old"}], "stream": True,
            "stream_options": {"include_obfuscation": False}}
    new = [{"role": "user", "content": "new"}]
    out = orjson.loads(oai.prepare_body("chat/completions", body, messages=new))
    assert out["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert out["messages"] == new
    assert not oai.client_wants_usage(body)
    resp = orjson.loads(oai.prepare_body("responses", {"model": "m", "input": "x"},
                                         max_output=32, messages=new))
    assert resp["max_output_tokens"] == 32 and resp["input"] == new


# --------------------------------------------------------------------------- errors


def test_error_body_shape() -> None:
    body = orjson.loads(oai.error_body("budget_exceeded", "No room.", type="tokens"))
    assert body == {"error": {"message": "No room.", "type": "tokens", "param": None,
                              "code": "budget_exceeded"}}
    event = oai.stream_error_event("x", "m", type="t", route="responses", sequence_number=4)
    assert event.startswith(b"event: error\ndata: ")
    assert orjson.loads(event.split(b"data: ")[1]) == {
        "type": "error", "code": "x", "message": "m", "param": None, "sequence_number": 4}


def test_classify_context_length() -> None:
    body = oai.error_body("context_length_exceeded", "This model's maximum context length is "
                          "4097 tokens.", type="invalid_request_error", param="messages")
    fault = oai.classify_error(400, body, {})
    assert fault.context_length and not fault.retryable
    assert fault.code == "context_length_exceeded"


def test_classify_retry_after_variants() -> None:
    assert oai.classify_error(429, b"", {"retry-after-ms": "250", "retry-after": "9"}
                              ).retry_after == 0.25
    f = oai.classify_error(429, b"{}", {"Retry-After": "3"})
    assert f.retryable and f.retry_after == 3.0
    date = "Wed, 21 Oct 2015 07:28:30 GMT"
    dated = oai.classify_error(503, None, {"retry-after": date}, now=1445412500.0)
    assert dated.retry_at == 1445412510.0 and dated.retry_after == 10.0
    assert oai.classify_error(503, None, {"retry-after": date}).retry_after is None
    assert oai.classify_error(500, b"not json", {"retry-after": "soon"}).retry_after is None


def test_classify_retryable_rules() -> None:
    assert oai.classify_error(500, b"", {}).retryable
    assert oai.classify_error(529, b"", {}).retryable
    assert oai.classify_error(408, b"", {}).retryable
    assert not oai.classify_error(400, b"", {}).retryable
    assert not oai.classify_error(429, b"", {"x-should-retry": "false"}).retryable
    assert oai.classify_error(400, b"", {"x-should-retry": "true"}).retryable
    quota = oai.error_body("insufficient_quota", "You exceeded your current quota",
                           type="insufficient_quota")
    assert not oai.classify_error(429, quota, {}).retryable


# --------------------------------------------------------------------------- validation

GOOD = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("patch", "param"), [
    ({"model": None}, "model"),
    ({"model": 3}, "model"),
    ({"messages": None}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [1]}, "messages[0]"),
    ({"messages": [{"role": None, "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"n": 1.5}, "n"),
    ({"n": True}, "n"),
    ({"n": 0}, "n"),
    ({"stream": "yes"}, "stream"),
])
def test_chat_validation(patch: dict, param: str) -> None:
    body = {**GOOD, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(InvalidRequest) as exc:
        oai.validate_chat_request(body)
    assert exc.value.param == param
    assert exc.value.message


def test_valid_requests_pass() -> None:
    oai.validate_chat_request({**GOOD, "messages": [{"role": "robot", "content": "x"}]})
    oai.validate_chat_request({**GOOD, "max_tokens": 5, "n": 2, "stream": True})
    oai.validate_responses_request({"model": "gpt-4o", "input": "hi", "max_output_tokens": 16})
    oai.validate_embeddings_request({"model": "e", "input": [[1, 2], [3]]})
    with pytest.raises(InvalidRequest):
        oai.validate_embeddings_request({"model": "e", "input": []})
    with pytest.raises(InvalidRequest):
        oai.validate_request("/v1/chat/completions", ["not", "an", "object"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                             max_size=4),
    max_leaves=20,
)
near_requests = st.fixed_dictionaries(
    {}, optional={"model": json_values | st.just("gpt-4o"), "messages": json_values | st.just(
        [{"role": "user", "content": "x"}]), "max_tokens": json_values, "n": json_values,
        "input": json_values, "stream": json_values, "max_output_tokens": json_values},
)


@settings(max_examples=400, deadline=None)
@given(body=json_values | near_requests)
def test_validation_never_crashes(body: object) -> None:
    for route in ("chat/completions", "responses", "embeddings"):
        try:
            assert oai.validate_request(route, body) is None
        except InvalidRequest as exc:
            assert exc.message
