"""Simulated Anthropic routes: POST /v1/messages and /v1/messages/count_tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tallygate.errors import InvalidRequest, TallygateError
from tallygate.providers import anthropic as ant
from tallygate.sim.agents import (
    ToolCall,
    anthropic_prefixes,
    flat_tools,
    marker_in_last_turn,
    pick_tool,
    prefix_key,
    signature,
    split_output,
)
from tallygate.sim.common import (
    CONFIG,
    PROMPT_CACHE,
    SimConfig,
    SimRequest,
    apply_pre_fault,
    base_headers,
    count_text,
    cut_plain,
    header_cached,
    json_response,
    new_id,
    pause_ms,
    prompt_tokens,
    read_request,
    reasoning_tokens,
    reply_budget,
    reply_text,
    reported_usage,
    send_events,
    sleep_s,
    split_reply,
    token_delay,
)
from tallygate.sim.structured import structured_reply


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)


def error_response(
    app: web.Application, req: SimRequest | None, status: int, message: str, *,
    type: str, headers: dict[str, str] | None = None, code: str | None = None,
) -> web.Response:
    rid = req.request_id if req else new_id("req_")
    out = base_headers(app, "anthropic", rid)
    out.update(headers or {})
    body = ant.error_body(code, message, type=type, request_id=rid)
    return web.Response(body=body, status=status, headers=out, content_type="application/json")


def context_error(
    app: web.Application, req: SimRequest, window: int, prompt: int, cap: int | None
) -> web.Response:
    if prompt > window or not cap:
        msg = f"prompt is too long: {prompt} tokens > {window} maximum"
    else:
        msg = (f"input length and `max_tokens` exceed context limit: {prompt} + {cap} > "
               f"{window}, decrease input length or `max_tokens` and try again")
    return error_response(app, req, 400, msg, type="invalid_request_error")


# Faults answered with a fixed error: status, message, error type, details.error_code.
_PLAIN_FAULTS: dict[str, tuple[int, str, str, str | None]] = {
    "500": (500, "Internal server error", "api_error", None),
    "502": (502, "Internal server error", "api_error", None),
    "503": (503, "Internal server error", "api_error", None),
    "529": (529, "Overloaded", "overloaded_error", None),
    # The provider's own final refusal: no retry-after, a code no retry can fix.
    "quota": (429, "You have reached your specified API usage limits.", "rate_limit_error",
              "enforced_spend_limit_reached"),
}


def fault_response(app: web.Application, req: SimRequest, prompt: int) -> web.Response | None:
    fault = req.fault
    if fault is None:
        return None
    if fault.name == "429":
        secs = fault.arg if fault.arg is not None else 1.0
        retry = {"retry-after": str(max(1, math.ceil(secs))),
                 "retry-after-ms": str(int(secs * 1000))}
        return error_response(
            app, req, 429, "Number of request tokens has exceeded your per-minute rate limit.",
            type="rate_limit_error", headers=retry)
    if fault.name in _PLAIN_FAULTS:
        status, message, kind, code = _PLAIN_FAULTS[fault.name]
        return error_response(app, req, status, message, type=kind, code=code)
    if fault.name == "context_length_exceeded":
        window = int(fault.arg) if fault.arg else app[CONFIG].context_window(req.model)
        return context_error(app, req, min(window, max(0, prompt - 1)), prompt, None)
    return None


async def _prepare(request: web.Request, route: str) -> tuple[SimRequest, int] | web.Response:
    app = request.app
    config = app[CONFIG]
    validate = (ant.validate_count_tokens_request if route == "messages/count_tokens"
                else ant.validate_messages_request)
    try:
        req = await read_request(request, route, validate)
    except InvalidRequest as exc:
        return error_response(app, None, 400, exc.message, type="invalid_request_error")
    await pause_ms(config.latency_ms)
    await apply_pre_fault(req.fault, config)
    prompt = prompt_tokens(app, "anthropic", req)
    failed = fault_response(app, req, prompt)
    if failed is not None:
        return failed
    window = config.context_window(req.model)
    cap = ant.requested_max_output(route, req.body) or 0
    if prompt > window or prompt + cap > window:
        return context_error(app, req, window, prompt, cap or None)
    return req, prompt


async def count_tokens(request: web.Request) -> web.StreamResponse:
    prepared = await _prepare(request, "messages/count_tokens")
    if isinstance(prepared, web.Response):
        return prepared
    req, prompt = prepared
    return json_response(request.app, "anthropic", req, {"input_tokens": prompt})


@dataclass(slots=True)
class Reply:
    """What one Messages call answers: an optional thinking block, then text or a call."""

    thinking: int
    thinking_text: str
    text: str
    tokens: int  # the text's or the tool call's tokens
    tool: ToolCall | None
    stop: str

    @property
    def output(self) -> int:
        return self.thinking + self.tokens


def _thinking_wanted(config: SimConfig, req: SimRequest) -> int:
    thinking = req.body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    wanted = reasoning_tokens(req, config.thinking_tokens if kind in ("enabled", "adaptive")
                              else 0)
    budget = ant.thinking_budget(req.body)
    return min(wanted, budget) if budget is not None else wanted


def _tool_call(req: SimRequest) -> ToolCall | None:
    tools = list(flat_tools(req.body.get("tools")))
    if not tools:
        return None
    choice = req.body.get("tool_choice")
    asked = marker_in_last_turn(req.body.get("messages") or [])
    if asked is None and isinstance(choice, dict) and choice.get("type") in ("tool", "any"):
        asked = (str(choice.get("name") or "*"), "")
    return pick_tool(tools, *asked) if asked is not None else None


def plan_reply(config: SimConfig, req: SimRequest) -> Reply:
    cap = ant.requested_max_output("messages", req.body)
    tool = _tool_call(req)
    shaped = structured_reply("anthropic", "messages", req.body, req.seed, req.model)
    if tool is not None:
        wanted = count_text(tool.arguments, req.model)
    elif shaped is not None:  # output_config.format: a JSON instance of the schema
        wanted = shaped.tokens
    else:
        wanted, _ = reply_budget(config, req, None)
    thinking, tokens, capped = split_output(cap, wanted, _thinking_wanted(config, req))
    if capped:
        tool = None  # a call cut short is no call: the text stops at max_tokens
    shown = req.body.get("thinking")
    omitted = isinstance(shown, dict) and shown.get("display") == "omitted"
    thinking_text = "" if omitted or not thinking else reply_text(req.seed + 7, thinking)
    if tool is not None:
        text = ""
    else:
        text = shaped.cut(tokens) if shaped is not None else reply_text(req.seed, tokens)
    stop = "tool_use" if tool is not None else ("max_tokens" if capped else "end_turn")
    return Reply(thinking, thinking_text, text, tokens, tool, stop)


def prompt_cache(app: web.Application, req: SimRequest, prompt: int) -> tuple[int, int]:
    """(read, written) input tokens of the prompt cache (agents.py)."""
    given = header_cached(req)
    if given is not None:
        return min(prompt, given), 0
    prefixes = anthropic_prefixes(req.body)
    if not prefixes:
        return 0, 0
    seen = app[PROMPT_CACHE]
    read, last = 0, 0
    for prefix in prefixes:
        key = "anthropic:" + prefix_key(prefix)
        tokens = seen.get(key)
        if tokens is None:
            tokens = min(prompt, _prefix_tokens(prefix, req.model))
            last = tokens
            seen.put(key, tokens)
        else:
            read, last = max(read, tokens), 0
    return read, max(0, last - read)


def _prefix_tokens(prefix: dict[str, Any], model: str) -> int:
    from tallygate.core import tokens
    from tallygate.core.catalog import resolve_model

    try:
        return tokens.count_request("anthropic", "messages", prefix, resolve_model(model)).tokens
    except TallygateError:
        return 0


def _usage(req: SimRequest, prompt: int, reply: Reply, cache: tuple[int, int],
           output: int | None = None) -> dict[str, Any]:
    read, written = cache
    usage: dict[str, Any] = {
        "input_tokens": max(0, prompt - read - written),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": reply.output if output is None else output,
        "service_tier": "standard",
    }
    if reply.thinking and output is None:
        usage["output_tokens_details"] = {"thinking_tokens": reply.thinking}
    return usage


def _content(req: SimRequest, reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.thinking:
        blocks.append({"type": "thinking", "thinking": reply.thinking_text,
                       "signature": signature(req.seed)})
    if reply.tool is not None:
        blocks.append({"type": "tool_use", "id": new_id("toolu_"), "name": reply.tool.name,
                       "input": orjson.loads(reply.tool.arguments)})
    else:
        blocks.append({"type": "text", "text": reply.text})
    return blocks


async def messages(request: web.Request) -> web.StreamResponse:
    prepared = await _prepare(request, "messages")
    if isinstance(prepared, web.Response):
        return prepared
    req, prompt = prepared
    config = request.app[CONFIG]
    reply = plan_reply(config, req)
    cache = prompt_cache(request.app, req, prompt)
    msg_id = new_id("msg_")
    content = _content(req, reply)
    if req.body.get("stream") is True:
        events = message_events(req, reply, content, prompt, cache, msg_id,
                                config.stream_chunk_tokens)
        return await send_events(request, req, "anthropic", events, config.stream_chunk_tokens)
    await pause_ms(config.ttft_ms)
    await sleep_s(token_delay(config, reply.output))
    body = {
        "id": msg_id, "type": "message", "role": "assistant", "model": req.model,
        "content": content, "stop_reason": reply.stop, "stop_sequence": None,
        "usage": reported_usage(req, _usage(req, prompt, reply, cache), "input_tokens"),
    }
    if req.fault is not None and req.fault.name == "cut":
        return await cut_plain(request, orjson.dumps(body))
    return json_response(request.app, "anthropic", req, body)


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **obj}) + b"\n\n"


def _pieces(text: str, size: int = 12) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _block_events(index: int, block: dict[str, Any], per_chunk: int) -> list[bytes]:
    """content_block_start, its deltas, content_block_stop — per block type, as the
    real API streams them (a tool's input as input_json_delta pieces)."""
    kind = block["type"]
    if kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": p}
                  for p in (split_reply(block["thinking"], per_chunk) if block["thinking"]
                            else [])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "tool_use":
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p}
                  for p in _pieces(orjson.dumps(block["input"]).decode())]
    else:
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in split_reply(block["text"],
                                                                        per_chunk)]
    events = [_event("content_block_start", {"index": index, "content_block": start})]
    events += [_event("content_block_delta", {"index": index, "delta": d}) for d in deltas]
    events.append(_event("content_block_stop", {"index": index}))
    return events


def message_events(req: SimRequest, reply: Reply, content: list[dict[str, Any]], prompt: int,
                   cache: tuple[int, int], msg_id: str, per_chunk: int) -> list[bytes]:
    """message_start, then per block content_block_start / deltas / content_block_stop
    (a ping after the first start), message_delta (cumulative usage), message_stop."""
    message = {"id": msg_id, "type": "message", "role": "assistant", "content": [],
               "model": req.model, "stop_reason": None, "stop_sequence": None,
               "usage": _usage(req, prompt, reply, cache, output=1)}
    events = [_event("message_start", {"message": message})]
    for index, block in enumerate(content):
        blocks = _block_events(index, block, per_chunk)
        events += blocks[:1] + ([_event("ping", {})] if index == 0 else []) + blocks[1:]
    final = _usage(req, prompt, reply, cache)
    delta_usage: dict[str, Any] = {"output_tokens": reply.output}
    if "output_tokens_details" in final:
        delta_usage["output_tokens_details"] = final["output_tokens_details"]
    events.append(_event("message_delta", {
        "delta": {"stop_reason": reply.stop, "stop_sequence": None}, "usage": delta_usage}))
    events.append(_event("message_stop", {}))
    return events
