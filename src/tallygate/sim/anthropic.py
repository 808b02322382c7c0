"""Simulated Anthropic routes: POST /v1/messages and /v1/messages/count_tokens."""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from tallygate.errors import InvalidRequest
from tallygate.providers import anthropic as ant
from tallygate.sim.common import (
    CONFIG,
    SimRequest,
    apply_pre_fault,
    base_headers,
    cached_tokens,
    cut_plain,
    json_response,
    new_id,
    pause_ms,
    prompt_tokens,
    read_request,
    reasoning_tokens,
    reply_budget,
    reply_text,
    send_events,
    sleep_s,
    split_reply,
    token_delay,
)
from tallygate.sim.structured import requested_schema, structured_reply


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)


def error_response(
    app: web.Application, req: SimRequest | None, status: int, message: str, *,
    type: str, headers: dict[str, str] | None = None,
) -> web.Response:
    rid = req.request_id if req else new_id("req_")
    out = base_headers(app, "anthropic", rid)
    out.update(headers or {})
    body = ant.error_body(None, message, type=type, request_id=rid)
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
    if fault.name in ("500", "502", "503"):
        return error_response(app, req, int(fault.name), "Internal server error",
                              type="api_error")
    if fault.name == "529":
        return error_response(app, req, 529, "Overloaded", type="overloaded_error")
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


def _usage(req: SimRequest, prompt: int, output: int) -> dict[str, Any]:
    cached = cached_tokens(req, prompt)
    usage: dict[str, Any] = {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output,
        "service_tier": "standard",
    }
    thinking = reasoning_tokens(req)
    if thinking:
        usage["output_tokens_details"] = {"thinking_tokens": thinking}
    return usage


async def messages(request: web.Request) -> web.StreamResponse:
    prepared = await _prepare(request, "messages")
    if isinstance(prepared, web.Response):
        return prepared
    req, prompt = prepared
    config = request.app[CONFIG]
    cap = ant.requested_max_output("messages", req.body)
    schema = requested_schema("anthropic", "messages", req.body)
    if schema is not None:  # structured output: a JSON instance of the schema
        text, tokens, capped = structured_reply(schema, req.seed, req.model, cap)
    else:
        tokens, capped = reply_budget(config, req, cap)
        text = reply_text(req.seed, tokens)
    output = tokens + reasoning_tokens(req)
    stop = "max_tokens" if capped else "end_turn"
    msg_id = new_id("msg_")
    if req.body.get("stream") is True:
        events = message_events(req, text, stop, prompt, output, msg_id,
                                config.stream_chunk_tokens)
        return await send_events(request, req, "anthropic", events, config.stream_chunk_tokens)
    await pause_ms(config.ttft_ms)
    await sleep_s(token_delay(config, output))
    body = {
        "id": msg_id, "type": "message", "role": "assistant", "model": req.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop, "stop_sequence": None, "usage": _usage(req, prompt, output),
    }
    if req.fault is not None and req.fault.name == "cut":
        return await cut_plain(request, orjson.dumps(body))
    return json_response(request.app, "anthropic", req, body)


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + orjson.dumps(obj) + b"\n\n"


def message_events(req: SimRequest, text: str, stop: str, prompt: int, output: int,
                   msg_id: str, per_chunk: int) -> list[bytes]:
    """message_start, content_block_start, ping, deltas, content_block_stop,
    message_delta (cumulative usage), message_stop — the real sequence."""
    start_usage = _usage(req, prompt, 1)
    start_usage.pop("output_tokens_details", None)
    message = {"id": msg_id, "type": "message", "role": "assistant", "content": [],
               "model": req.model, "stop_reason": None, "stop_sequence": None,
               "usage": start_usage}
    events = [
        _event("message_start", {"type": "message_start", "message": message}),
        _event("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
        _event("ping", {"type": "ping"}),
    ]
    for piece in split_reply(text, per_chunk):
        events.append(_event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": piece}}))
    events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    final = _usage(req, prompt, output)
    delta_usage: dict[str, Any] = {"output_tokens": output}
    if "output_tokens_details" in final:
        delta_usage["output_tokens_details"] = final["output_tokens_details"]
    events.append(_event("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
        "usage": delta_usage}))
    events.append(_event("message_stop", {"type": "message_stop"}))
    return events
