"""A cached (non-streaming) answer replayed as the protocol's SSE stream, for a client
that asks for `stream: true`: OpenAI chat chunks ending with `data: [DONE]` (a usage
chunk only when the client set stream_options.include_usage), or Anthropic's
message_start … message_stop events. Responses-API streams are not replayed (their event
sequence carries server state); such requests go upstream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

REPLAYABLE = frozenset({("openai", "chat/completions"), ("anthropic", "messages")})


def can_replay(protocol: str, route: str) -> bool:
    return (protocol, route) in REPLAYABLE


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\n" + _data(obj)


def openai_chat_sse(answer: Mapping[str, Any], *, include_usage: bool) -> bytes:
    """chat.completion → chat.completion.chunk events (role, content/tool calls, finish)."""
    head = {"id": answer.get("id"), "object": "chat.completion.chunk",
            "created": answer.get("created"), "model": answer.get("model"),
            "system_fingerprint": answer.get("system_fingerprint")}
    extra = {"usage": None} if include_usage else {}
    out: list[bytes] = []

    def chunk(index: int, delta: Mapping[str, Any], finish: str | None = None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        out.append(_data({**head, "choices": [choice], **extra}))

    for choice in answer.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        chunk(index, {"role": "assistant", "content": ""})
        if message.get("content"):
            chunk(index, {"content": message["content"]})
        for j, call in enumerate(message.get("tool_calls") or []):
            chunk(index, {"tool_calls": [{"index": j, **call}]})
        chunk(index, {}, choice.get("finish_reason") or "stop")
    if include_usage:
        out.append(_data({**head, "choices": [], "usage": answer.get("usage")}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def anthropic_sse(answer: Mapping[str, Any]) -> bytes:
    """Message → message_start, content_block_* per block, message_delta, message_stop."""
    usage = dict(answer.get("usage") or {})
    start = {**answer, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 0}}
    out = [_event("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(answer.get("content") or []):
        out += _block_events(i, block)
    delta = {"stop_reason": answer.get("stop_reason"),
             "stop_sequence": answer.get("stop_sequence")}
    out.append(_event("message_delta", {"type": "message_delta", "delta": delta,
                                        "usage": {"output_tokens": usage.get("output_tokens", 0)}}))
    out.append(_event("message_stop", {"type": "message_stop"}))
    return b"".join(out)


def _block_events(index: int, block: Mapping[str, Any]) -> list[bytes]:
    kind = block.get("type")
    if kind == "text":
        first: dict[str, Any] = {"type": "text", "text": ""}
        delta: dict[str, Any] | None = {"type": "text_delta", "text": block.get("text", "")}
    elif kind == "tool_use":
        first = {**block, "input": {}}
        delta = {"type": "input_json_delta",
                 "partial_json": orjson.dumps(block.get("input", {})).decode()}
    else:  # thinking and other blocks: sent whole in the start event
        first, delta = dict(block), None
    out = [_event("content_block_start",
                  {"type": "content_block_start", "index": index, "content_block": first})]
    if delta is not None:
        out.append(_event("content_block_delta",
                          {"type": "content_block_delta", "index": index, "delta": delta}))
    out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out
