"""Anthropic adapter: usage (cache fields, thinking), the Messages SSE tap
(message_start + cumulative message_delta), errors, classification, validation."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tallygate.errors import InvalidRequest
from tallygate.providers import anthropic as ant
from tallygate.types import Usage


def ev(kind: str, obj: dict) -> bytes:
    return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **obj}) + b"\n\n"


START_USAGE = {"input_tokens": 11, "cache_creation_input_tokens": 100,
               "cache_read_input_tokens": 2000, "output_tokens": 1}
STREAM = b"".join([
    ev("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant",
                                      "content": [], "usage": START_USAGE}}),
    ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    b'event: ping\ndata: {"type": "ping"}\n\n',
    ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
    ev("message_delta", {"delta": {"stop_reason": None}, "usage": {"output_tokens": 3}}),
    ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " you"}}),
    ev("content_block_stop", {"index": 0}),
    ev("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                         "usage": {"output_tokens": 6}}),
    ev("message_stop", {}),
])
FINAL = Usage(input_tokens=2111, output_tokens=6, cached_tokens=2000, cache_write_tokens=100)


def test_usage_from_body_sums_all_input() -> None:
    body = {"usage": {**START_USAGE, "output_tokens": 40,
                      "output_tokens_details": {"thinking_tokens": 25}}}
    assert ant.usage_from_body("/v1/messages", body) == Usage(2111, 40, 2000, 100, 25)
    assert ant.usage_from_body("messages", {"usage": {"input_tokens": 5, "output_tokens": 1}}
                               ) == Usage(5, 1)
    assert ant.usage_from_body("messages/count_tokens", {"input_tokens": 42}) == Usage(42)
    assert ant.usage_from_body("messages", {}) is None


def test_tap_assigns_cumulative_usage_and_passes_bytes() -> None:
    tap = ant.stream_tap()
    out = b"".join(tap.feed(STREAM[i : i + 13]) for i in range(0, len(STREAM), 13))
    assert out + tap.flush() == STREAM
    assert tap.usage == FINAL  # 6, not 1 + 3 + 6
    assert tap.done and tap.first_token_seen and tap.finish_reason == "end_turn"
    assert tap.generated_text == "Hello you"


def test_tap_defers_text_deltas_after_the_first() -> None:
    tap = ant.stream_tap()
    tap.feed(STREAM)
    assert tap._deferred == [ev("content_block_delta", {
        "index": 0, "delta": {"type": "text_delta", "text": " you"}})]
    assert tap.usage == FINAL and tap.finish_reason == "end_turn"
    assert tap.generated_text == "Hello you" and tap._deferred == []


def test_tap_every_split_offset() -> None:
    for i in range(len(STREAM) + 1):
        tap = ant.MessagesStreamTap()
        assert tap.feed(STREAM[:i]) + tap.feed(STREAM[i:]) + tap.flush() == STREAM
        assert tap.usage == FINAL, i


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=30), crlf=st.booleans())
def test_tap_any_chunking(cuts: list[int], crlf: bool) -> None:
    stream = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    points = sorted(set(cuts))
    edges = [0, *points, len(stream)]
    tap = ant.MessagesStreamTap()
    out = b"".join(tap.feed(stream[a:b]) for a, b in itertools.pairwise(edges))
    assert out + tap.flush() == stream
    assert tap.usage == FINAL
    assert tap.generated_text == "Hello you"


def test_delta_with_input_fields_overwrites() -> None:
    tap = ant.MessagesStreamTap()
    tap.feed(STREAM.split(b"event: content_block_start")[0])
    tap.feed(ev("message_delta", {"usage": {"output_tokens": 9, "input_tokens": 20,
                                            "cache_read_input_tokens": 0}}))
    assert tap.usage == Usage(input_tokens=120, output_tokens=9, cached_tokens=0,
                              cache_write_tokens=100)


def test_cut_stream_usage_so_far() -> None:
    tap = ant.MessagesStreamTap()
    cut = STREAM.index(b"event: message_delta")
    tap.feed(STREAM[:cut])
    assert not tap.done
    settled = tap.usage_so_far(input_tokens=999, count=lambda text: len(text.split()))
    # the provider's input figure wins over our estimate; output = the text seen so far
    assert settled == Usage(input_tokens=2111, output_tokens=1, cached_tokens=2000,
                            cache_write_tokens=100)


def test_error_body_and_stream_error() -> None:
    body = orjson.loads(ant.error_body(None, "Overloaded", type="overloaded_error",
                                       request_id="req_1"))
    assert body == {"type": "error", "error": {"type": "overloaded_error",
                                               "message": "Overloaded"}, "request_id": "req_1"}
    coded = orjson.loads(ant.error_body("budget_exceeded", "No room", type="rate_limit_error"))
    assert coded["error"]["details"] == {"error_code": "budget_exceeded"}
    event = ant.stream_error_event("budget_exceeded", "No room", type="rate_limit_error")
    tap = ant.MessagesStreamTap()
    assert tap.feed(event) == event
    assert tap.error is not None and tap.error["type"] == "rate_limit_error"


def test_classify() -> None:
    long = ant.error_body(None, "prompt is too long: 210000 tokens > 200000 maximum",
                          type="invalid_request_error")
    f = ant.classify_error(400, long, {"request-id": "r"})
    assert f.context_length and not f.retryable
    both = ant.error_body(None, "input length and `max_tokens` exceed context limit: "
                          "199000 + 8192 > 200000", type="invalid_request_error")
    assert ant.classify_error(400, both, {}).context_length
    over = ant.classify_error(529, ant.error_body(None, "Overloaded", type="overloaded_error"),
                              {"retry-after": "2"})
    assert over.retryable and over.retry_after == 2.0 and over.type == "overloaded_error"
    spend = ant.error_body("enforced_spend_limit_reached", "limit", type="rate_limit_error")
    assert not ant.classify_error(429, spend, {}).retryable


def test_prepare_body() -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [],
            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    out = orjson.loads(ant.prepare_body("messages", body, max_output=2048, model="claude-x",
                                        system="short"))
    assert out == {"model": "claude-x", "max_tokens": 2048, "messages": [], "system": "short",
                   "thinking": {"type": "enabled", "budget_tokens": 1024}}


def _thinking(max_tokens: int, budget: int, cap: int, **kw: bool) -> dict:
    body = {"model": "claude-sonnet-4-5", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hi"}],
            "thinking": {"type": "enabled", "budget_tokens": budget}}
    return orjson.loads(ant.prepare_body("messages", body, max_output=cap, **kw))


def test_lowered_cap_lowers_the_thinking_budget() -> None:
    # Claude Code's sonnet request: 32,000 with a 31,999 budget, under a 16,000 cap.
    out = _thinking(32000, 31999, 16000)
    assert out["max_tokens"] == 16000
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 15999}
    assert _thinking(32000, 8000, 16000)["thinking"]["budget_tokens"] == 8000  # it fits
    # Interleaved thinking: the budget spans the turn and may exceed max_tokens.
    assert _thinking(32000, 31999, 16000, interleaved=True)["thinking"]["budget_tokens"] == 31999
    # The client's own budget is the provider's to judge when tallygate lowered nothing.
    assert _thinking(2000, 5000, 2000)["thinking"]["budget_tokens"] == 5000
    with pytest.raises(InvalidRequest, match="at least 1024") as info:
        _thinking(32000, 31999, 1024)
    assert info.value.param == "thinking.budget_tokens"
    assert _thinking(32000, 31999, 1025)["thinking"]["budget_tokens"] == 1024
    adaptive = {"model": "m", "max_tokens": 128000, "messages": [],
                "thinking": {"type": "adaptive", "display": "omitted"}}
    out = orjson.loads(ant.prepare_body("messages", adaptive, max_output=8192))
    assert out["thinking"] == adaptive["thinking"] and out["max_tokens"] == 8192


def test_output_floor_and_betas() -> None:
    body = {"thinking": {"type": "enabled", "budget_tokens": 2000}}
    assert ant.output_floor("messages", body)[0] == 1025
    assert ant.output_floor("messages", {"thinking": {"type": "adaptive"}}) is None
    assert ant.output_floor("messages/count_tokens", body) is None
    assert ant.interleaved_thinking(
        {"anthropic-beta": "claude-code-20250219, interleaved-thinking-2025-05-14"})
    assert not ant.interleaved_thinking({"anthropic-beta": "effort-2025-11-24"})
    assert not ant.interleaved_thinking({})


GOOD = {"model": "claude-haiku-4-5", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("patch", "param"), [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"model": None}, "model"),
    ({"messages": None}, "messages"),
    ({"messages": [{"role": 5, "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"system": 5}, "system"),
    ({"stream": 1}, "stream"),
])
def test_messages_validation(patch: dict, param: str) -> None:
    body = {k: v for k, v in {**GOOD, **patch}.items() if v is not None}
    with pytest.raises(InvalidRequest) as exc:
        ant.validate_messages_request(body)
    assert exc.value.param == param


def test_unknown_roles_blocks_and_fields_pass() -> None:
    """Claude Code's default request: a mid-conversation system turn, adaptive thinking,
    output_config, context_management, a deferred tool: nothing the gateway must judge."""
    body = {**GOOD, "max_tokens": 128000,
            "messages": [{"role": "user", "content": "hi"},
                         {"role": "system", "content": [{"type": "text", "text": "env"}]},
                         {"role": "observer"}],
            "thinking": {"type": "adaptive", "display": "omitted"},
            "output_config": {"effort": "medium"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
            "tools": [{"name": "Read", "input_schema": {"type": "object"},
                       "defer_loading": True}]}
    ant.validate_messages_request(body)


def test_count_tokens_needs_no_max_tokens() -> None:
    body = {k: v for k, v in GOOD.items() if k != "max_tokens"}
    ant.validate_request("/v1/messages/count_tokens", body)
    with pytest.raises(InvalidRequest):
        ant.validate_request("/v1/messages", body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                             max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(body=json_values | st.fixed_dictionaries({}, optional={
    "model": json_values, "max_tokens": json_values, "messages": json_values,
    "system": json_values}))
def test_validation_never_crashes(body: object) -> None:
    for route in ("messages", "messages/count_tokens"):
        try:
            assert ant.validate_request(route, body) is None
        except InvalidRequest as exc:
            assert exc.message
