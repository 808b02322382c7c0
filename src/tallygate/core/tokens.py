"""The public counting API. Every function returns `Count(tokens, exact, encoding)`.

- Exact counts with tiktoken (offline, hash-verified: bpe.py) for models with an encoding;
  the documented upper-bound estimate (textcount.py) for the others, with `exact=False`.
- Chat framing and tools: chat_tokens.py (OpenAI cookbook); Anthropic: anthropic_tokens.py.
- Hostile input: a size cap (`max_chars`, default textcount.DEFAULT_MAX_CHARS) raises
  InputTooLarge; long runs are counted in bounded time; nesting deeper than
  chat_tokens.MAX_DEPTH raises InvalidRequest.
- Async: `acount_text` / `acount_request` count inline below `INLINE_CHARS` characters and in
  a worker thread above (tiktoken releases the GIL), so the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from tallygate.core.anthropic_tokens import anthropic_tally
from tallygate.core.catalog import resolve_model
from tallygate.core.chat_tokens import (
    CHAT_REPLY_PRIMING,
    OverInlineBudget,
    Tally,
    cached_message,
    clear_message_cache,
    inline_budget,
    json_text,
    message_cache_info,
    message_tokens,
    profile_for,
    tools_tokens,
)
from tallygate.core.textcount import check_size, counter_for
from tallygate.errors import InvalidRequest
from tallygate.types import Count, ModelInfo

INLINE_CHARS = 32_000
# A request up to this size is counted on the event loop when no more than INLINE_CHARS
# of it are new to the per-message cache (an agent re-sending its conversation with one
# new turn): hashing the cached messages costs ~2 µs per KB, a thread hop far more on a
# busy process (the worker waits for the GIL). Larger ones always go to a thread.
INLINE_CACHED_CHARS = 400_000

__all__ = [
    "CHAT_REPLY_PRIMING",
    "INLINE_CHARS",
    "acount_request",
    "acount_text",
    "clear_message_cache",
    "count_anthropic_messages",
    "count_openai_chat",
    "count_request",
    "count_text",
    "counts_as_anthropic",
    "message_cache_info",
    "message_tokens",
]


def counts_as_anthropic(info: ModelInfo) -> bool:
    """Whether chat messages for this model are counted as an Anthropic Messages body
    (the Claude estimate) rather than OpenAI's chat framing."""
    return info.provider == "anthropic" or info.name.startswith("claude")


def count_text(
    text: str,
    model: ModelInfo | str | None = None,
    *,
    encoding: str | None = None,
    max_chars: int | None = None,
) -> Count:
    """Tokens of plain text (no chat framing). `encoding` wins over the model's."""
    if not isinstance(text, str):
        raise InvalidRequest("text must be a string")
    check_size(len(text), max_chars)
    enc = encoding if encoding is not None else resolve_model(model).encoding
    counter = counter_for(enc)
    tokens, exact = counter.count(text)
    return Count(tokens, exact, counter.encoding)


def _chat_tally(
    messages: Sequence[Mapping[str, Any]],
    info: ModelInfo,
    tools: Sequence[Any] | None,
    max_chars: int | None,
) -> Tally:
    if not isinstance(messages, list | tuple):
        raise InvalidRequest("messages must be a list", param="messages")
    counter = counter_for(info.encoding)
    tally = Tally(counter, max_chars)
    profile = profile_for(info)
    for message in messages:
        tokens, exact, chars = cached_message(message, counter, profile, max_chars)
        tally.charge(chars)
        tally.add(tokens, exact)
    tally.add(CHAT_REPLY_PRIMING)
    if tools:
        if not isinstance(tools, list | tuple):
            raise InvalidRequest("tools must be a list", param="tools")
        tools_tokens(tools, tally)
    return tally


def count_openai_chat(
    messages: Sequence[Mapping[str, Any]],
    model: ModelInfo | str | None = None,
    *,
    tools: Sequence[Any] | None = None,
    functions: Sequence[Any] | None = None,
    max_chars: int | None = None,
) -> Count:
    """A chat/completions prompt: the cookbook's method plus tools (legacy functions too)."""
    info = resolve_model(model)
    all_tools = list(tools or []) + list(functions or [])
    tally = _chat_tally(messages, info, all_tools, max_chars)
    return Count(tally.tokens, tally.exact, tally.counter.encoding)


def count_anthropic_messages(
    body: Mapping[str, Any], model: ModelInfo | str | None = None, *, max_chars: int | None = None
) -> Count:
    """An Anthropic Messages (or count_tokens) body; model defaults to body["model"]."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    info = resolve_model(model if model is not None else body.get("model"))
    tally = Tally(counter_for(info.encoding), max_chars)
    anthropic_tally(body, tally)
    return Count(tally.tokens, tally.exact, tally.counter.encoding)


def _response_format(body: Mapping[str, Any], tally: Tally) -> None:
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        tally.text(json_text(fmt.get("json_schema", {})))
        tally.exact = False


def _openai_chat_body(body: Mapping[str, Any], info: ModelInfo, max_chars: int | None) -> Tally:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("missing required field: messages", param="messages")
    tools = list(body.get("tools") or []) + list(body.get("functions") or [])
    tally = _chat_tally(messages, info, tools, max_chars)
    _response_format(body, tally)
    return tally


def _responses_messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Responses API input (string or items) + instructions → chat-shaped messages."""
    out: list[Mapping[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        out.append({"role": "system", "content": body["instructions"]})
    items = body.get("input", [])
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    if not isinstance(items, list):
        raise InvalidRequest("input must be a string or a list of items", param="input")
    for item in items:
        out.append(_responses_item(item))
    return out


def _responses_item(item: Any) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise InvalidRequest("each input item must be an object", param="input")
    kind = item.get("type", "message")
    if kind == "message":
        content = item.get("content")
        if isinstance(content, list):
            content = [_responses_part(p) for p in content]
        return {"role": item.get("role", "user"), "content": content}
    if kind == "function_call":
        fn = {"name": item.get("name", ""), "arguments": item.get("arguments", "")}
        return {"role": "assistant", "tool_calls": [{"function": fn}]}
    if kind == "function_call_output":
        output = item.get("output", "")
        return {"role": "tool", "content": output if isinstance(output, str | list) else ""}
    return {"role": "assistant", "item": dict(item)}  # other items: their JSON, a bound


def _responses_part(part: Any) -> Any:
    if not isinstance(part, Mapping):
        return part
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image":
        url = part.get("image_url") or ""
        detail = part.get("detail", "auto")
        return {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    return part


def _responses_body(body: Mapping[str, Any], info: ModelInfo, max_chars: int | None) -> Tally:
    tools = [
        {"function": t} if isinstance(t, Mapping) and t.get("type") == "function" else t
        for t in (body.get("tools") or [])
    ]
    return _chat_tally(_responses_messages(body), info, tools, max_chars)


def _token_inputs(value: Any, tally: Tally, field: str) -> None:
    """Embeddings `input` / completions `prompt`: string, strings, token ids, or lists of ids."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise InvalidRequest(f"{field} must be a string or a list", param=field)
    if items and all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        tally.add(len(items))
        return
    for item in items:
        if isinstance(item, str):
            tally.text(item)
        elif isinstance(item, list) and all(isinstance(x, int) for x in item):
            tally.add(len(item))
        else:
            raise InvalidRequest(f"{field}: unsupported item type {type(item).__name__}")


def count_request(
    protocol: str,
    route: str,
    body: Mapping[str, Any],
    model: ModelInfo,
    *,
    max_chars: int | None = None,
) -> Count:
    """Input tokens of a request body, dispatched on protocol ("openai"/"anthropic") and route."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    counter = counter_for(model.encoding)
    if protocol == "anthropic" and "messages" in route:
        tally = Tally(counter, max_chars)
        anthropic_tally(body, tally)
    elif protocol == "openai" and "chat/completions" in route:
        tally = _openai_chat_body(body, model, max_chars)
    elif protocol == "openai" and "responses" in route:
        tally = _responses_body(body, model, max_chars)
    elif protocol == "openai" and "embeddings" in route:
        tally = Tally(counter, max_chars)
        _token_inputs(body.get("input"), tally, "input")
    elif protocol == "openai" and "completions" in route:
        tally = Tally(counter, max_chars)
        _token_inputs(body.get("prompt", ""), tally, "prompt")
    else:
        raise InvalidRequest(f"cannot count tokens for {protocol} route {route!r}")
    return Count(tally.tokens, tally.exact, tally.counter.encoding)


def _approx_chars(value: Any, stop: int) -> int:
    """Characters of strings inside `value`, walking no further than `stop`."""
    total = 0
    stack = [value]
    while stack and total <= stop:
        item = stack.pop()
        kind = type(item)  # exact JSON types first: an ABC isinstance check costs more
        if kind is str:
            total += len(item)
        elif kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif isinstance(item, str):
            total += len(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


async def acount_text(
    text: str,
    model: ModelInfo | str | None = None,
    *,
    encoding: str | None = None,
    max_chars: int | None = None,
) -> Count:
    if isinstance(text, str) and len(text) <= INLINE_CHARS:
        return count_text(text, model, encoding=encoding, max_chars=max_chars)
    return await asyncio.to_thread(count_text, text, model, encoding=encoding, max_chars=max_chars)


async def acount_request(
    protocol: str,
    route: str,
    body: Mapping[str, Any],
    model: ModelInfo,
    *,
    max_chars: int | None = None,
) -> Count:
    size = _approx_chars(body, INLINE_CACHED_CHARS)
    if size <= INLINE_CHARS:
        return count_request(protocol, route, body, model, max_chars=max_chars)
    if size <= INLINE_CACHED_CHARS:
        try:
            with inline_budget(INLINE_CHARS):
                return count_request(protocol, route, body, model, max_chars=max_chars)
        except OverInlineBudget:
            pass  # new text: the messages counted so far are cached for the thread
    return await asyncio.to_thread(count_request, protocol, route, body, model, max_chars=max_chars)
