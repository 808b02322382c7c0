"""Simulated OpenAI routes: chat/completions, responses, embeddings, models."""

from __future__ import annotations

import base64
import math
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from tallygate.errors import InvalidRequest
from tallygate.providers import openai as oai
from tallygate.sim.agents import (
    ToolCall,
    flat_tools,
    marker_in_last_turn,
    openai_cached,
    pick_tool,
    signature,
    split_output,
)
from tallygate.sim.common import (
    CONFIG,
    PROMPT_CACHE,
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

Producer = Callable[[web.Request, SimRequest, int], Awaitable[web.StreamResponse]]
FINGERPRINT = "fp_tallygate_sim"


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)


def error_response(
    app: web.Application, req: SimRequest | None, status: int, message: str, *,
    type: str, code: str | None = None, param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    out = base_headers(app, "openai", req.request_id if req else new_id("req_"))
    out.update(headers or {})
    body = oai.error_body(code, message, type=type, param=param)
    return web.Response(body=body, status=status, headers=out, content_type="application/json")


_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
# Faults answered with a fixed error: status, message, error type, code.
_PLAIN_FAULTS: dict[str, tuple[int, str, str, str | None]] = {
    "500": (500, _SERVER_ERROR, "server_error", None),
    "502": (502, _SERVER_ERROR, "server_error", None),
    "503": (503, _SERVER_ERROR, "server_error", None),
    "529": (529, "The engine is currently overloaded, please try again later.",
            "server_error", "overloaded"),
    # OpenAI's own final refusal: no retry-after; clients stop on it.
    "quota": (429, "You exceeded your current quota, please check your plan and billing "
              "details.", "insufficient_quota", "insufficient_quota"),
}


def fault_response(app: web.Application, req: SimRequest, prompt: int) -> web.Response | None:
    fault = req.fault
    if fault is None:
        return None
    if fault.name == "429":
        secs = fault.arg if fault.arg is not None else 1.0
        retry = {"retry-after": str(max(1, math.ceil(secs))),
                 "retry-after-ms": str(int(secs * 1000))}
        msg = (f"Rate limit reached for {req.model} in organization org-sim on tokens per min "
               f"(TPM): Limit 30000, Used 30000, Requested {prompt}. Please try again in {secs}s.")
        return error_response(app, req, 429, msg, type="tokens", code="rate_limit_exceeded",
                              headers=retry)
    if fault.name in _PLAIN_FAULTS:
        status, msg, kind, code = _PLAIN_FAULTS[fault.name]
        return error_response(app, req, status, msg, type=kind, code=code)
    if fault.name == "context_length_exceeded":
        window = int(fault.arg) if fault.arg else app[CONFIG].context_window(req.model)
        cap = oai.requested_max_output(req.route, req.body)
        return context_error(app, req, window, prompt, cap)
    return None


def context_error(
    app: web.Application, req: SimRequest, window: int, prompt: int, cap: int | None
) -> web.Response:
    if cap:
        msg = (f"This model's maximum context length is {window} tokens. However, you requested "
               f"{prompt + cap} tokens ({prompt} in the messages, {cap} in the completion). "
               "Please reduce the length of the messages or completion.")
    else:
        msg = (f"This model's maximum context length is {window} tokens. However, your messages "
               f"resulted in {prompt} tokens. Please reduce the length of the messages.")
    return error_response(app, req, 400, msg, type="invalid_request_error",
                          code="context_length_exceeded", param="messages")


async def serve(
    request: web.Request, route: str, validate: Callable[[Any], None], produce: Producer
) -> web.StreamResponse:
    """The shared life of one request: parse, wait, faults, context check, produce."""
    app = request.app
    config = app[CONFIG]
    try:
        req = await read_request(request, route, validate)
    except InvalidRequest as exc:
        return error_response(app, None, 400, exc.message, type="invalid_request_error",
                              param=exc.param)
    await pause_ms(config.latency_ms)
    await apply_pre_fault(req.fault, config)
    prompt = prompt_tokens(app, "openai", req)
    failed = fault_response(app, req, prompt)
    if failed is not None:
        return failed
    if route != "embeddings":
        window = config.context_window(req.model)
        cap = oai.requested_max_output(route, req.body) or 0
        if prompt > window or prompt + cap > window:
            return context_error(app, req, window, prompt, cap or None)
    return await produce(request, req, prompt)


# --------------------------------------------------------------------------- chat


def chat_usage(prompt: int, completion: int, cached: int, reasoning: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    }


def _chat_plan(app: web.Application, req: SimRequest, prompt: int
               ) -> tuple[list[str], str, dict]:
    config = app[CONFIG]
    n = req.body.get("n") or 1
    # A JSON-Schema request gets a JSON instance of the schema (the same for every choice).
    shaped = structured_reply("openai", req.route, req.body, req.seed, req.model)
    wanted = shaped.tokens if shaped is not None else reply_budget(config, req, None)[0]
    default = config.thinking_tokens if oai.reasoning_requested(req.body) else 0
    cap = oai.requested_max_output(req.route, req.body)
    # Reasoning tokens are completion tokens: they count inside max_completion_tokens.
    reasoning, tokens, capped = split_output(cap, wanted, reasoning_tokens(req, default))
    texts = [shaped.cut(tokens) if shaped is not None else reply_text(req.seed + i, tokens)
             for i in range(n)]
    usage = chat_usage(prompt, n * tokens + reasoning, cached(app, req, prompt),
                       reasoning)
    return texts, ("length" if capped else "stop"), usage


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await serve(request, "chat/completions", oai.validate_chat_request, _chat)


async def _chat(request: web.Request, req: SimRequest, prompt: int) -> web.StreamResponse:
    config = request.app[CONFIG]
    texts, finish, usage = _chat_plan(request.app, req, prompt)
    if req.body.get("stream") is True:
        return await _chat_stream(request, req, texts, finish, usage)
    await pause_ms(config.ttft_ms)
    await sleep_s(token_delay(config, usage["completion_tokens"]))
    body = {
        "id": new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
        "model": req.model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text, "refusal": None,
                                     "annotations": []},
             "logprobs": None, "finish_reason": finish}
            for i, text in enumerate(texts)
        ],
        "usage": reported_usage(req, usage, "prompt_tokens"), "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    if req.fault is not None and req.fault.name == "cut":
        return await cut_plain(request, orjson.dumps(body))
    return json_response(request.app, "openai", req, body)


def chat_chunks(
    req: SimRequest, texts: list[str], finish: str, usage: dict, per_chunk: int
) -> list[bytes]:
    """Every SSE event of a chat stream, in order, as bytes."""
    include_usage = oai.client_wants_usage(req.body)
    head = {"id": new_id("chatcmpl-"), "object": "chat.completion.chunk",
            "created": int(time.time()), "model": req.model, "service_tier": "default",
            "system_fingerprint": FINGERPRINT}

    def event(choices: list[dict], chunk_usage: dict | None = None) -> bytes:
        obj = {**head, "choices": choices}
        if include_usage:
            obj["usage"] = chunk_usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def choice(i: int, delta: dict, reason: str | None = None) -> dict:
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}

    events = [event([choice(i, {"role": "assistant", "content": "", "refusal": None})
                     for i in range(len(texts))])]
    pieces = [split_reply(text, per_chunk) for text in texts]
    for k in range(max(len(p) for p in pieces)):
        for i, parts in enumerate(pieces):
            if k < len(parts):
                events.append(event([choice(i, {"content": parts[k]})]))
    events.append(event([choice(i, {}, finish) for i in range(len(texts))]))
    if include_usage:
        events.append(event([], usage))
    events.append(b"data: [DONE]\n\n")
    return events


async def _chat_stream(
    request: web.Request, req: SimRequest, texts: list[str], finish: str, usage: dict
) -> web.StreamResponse:
    config = request.app[CONFIG]
    events = chat_chunks(req, texts, finish, usage, config.stream_chunk_tokens)
    return await send_events(request, req, "openai", events, config.stream_chunk_tokens)


# --------------------------------------------------------------------------- responses


def _response_obj(req: SimRequest, output: list[dict[str, Any]], status: str,
                  usage: dict | None, resp_id: str) -> dict[str, Any]:
    body = req.body
    obj = {
        "id": resp_id, "object": "response", "created_at": int(time.time()), "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": req.model, "output": output, "parallel_tool_calls": True,
        "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
        "store": False, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
        "metadata": {},
    }
    if usage is not None:  # the spec's Response.usage is not nullable: omit it until known
        obj["usage"] = usage
    return obj


def responses_usage(prompt: int, output: int, cached: int, reasoning: int) -> dict[str, Any]:
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + output}


def cached(app: web.Application, req: SimRequest, prompt: int) -> int:
    """The header's figure, else the prompt cache's (agents.py)."""
    given = header_cached(req)
    if given is not None:
        return min(prompt, given)
    return openai_cached(app[PROMPT_CACHE], req.body, prompt)


def _responses_tool(req: SimRequest) -> ToolCall | None:
    items = req.body.get("input")
    items = items if isinstance(items, list) else []
    tools = list(flat_tools(req.body.get("tools")))
    for item in items:  # Codex sends its tools as an `additional_tools` input item
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            tools += list(flat_tools(item.get("tools")))
    if not tools:
        return None
    asked = marker_in_last_turn(items)
    choice = req.body.get("tool_choice")
    if asked is None and (choice == "required" or isinstance(choice, dict)):
        name = choice.get("name") if isinstance(choice, dict) else None
        asked = (str(name or "*"), "")
    return pick_tool(tools, *asked) if asked is not None else None


def _output_items(req: SimRequest, text: str, tool: ToolCall | None, reasoning: int,
                  status: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if reasoning:
        item: dict[str, Any] = {"id": new_id("rs_"), "type": "reasoning", "summary": []}
        include = req.body.get("include")
        if isinstance(include, list) and "reasoning.encrypted_content" in include:
            item["encrypted_content"] = "gAAAA" + signature(req.seed)
        items.append(item)
    if tool is None:
        items.append({"id": new_id("msg_"), "type": "message", "role": "assistant",
                      "status": "completed" if status == "completed" else "incomplete",
                      "content": [{"type": "output_text", "text": text, "annotations": [],
                                   "logprobs": []}]})
    elif tool.kind == "custom":
        call = {"id": new_id("ctc_"), "type": "custom_tool_call", "call_id": new_id("call_"),
                "name": tool.name, "input": tool.arguments}
        items.append({**call, "namespace": tool.namespace} if tool.namespace else call)
    else:
        call = {"id": new_id("fc_"), "type": "function_call", "call_id": new_id("call_"),
                "name": tool.name, "arguments": tool.arguments, "status": "completed"}
        items.append({**call, "namespace": tool.namespace} if tool.namespace else call)
    return items


async def responses(request: web.Request) -> web.StreamResponse:
    return await serve(request, "responses", oai.validate_responses_request, _responses)


async def _responses(request: web.Request, req: SimRequest, prompt: int) -> web.StreamResponse:
    config = request.app[CONFIG]
    tool = _responses_tool(req)
    shaped = structured_reply("openai", "responses", req.body, req.seed, req.model)
    if tool is not None:
        wanted = count_text(tool.arguments, req.model)
    else:
        wanted = shaped.tokens if shaped is not None else reply_budget(config, req, None)[0]
    default = config.thinking_tokens if oai.reasoning_requested(req.body) else 0
    cap = oai.requested_max_output("responses", req.body)
    # Reasoning tokens are output tokens: they count inside max_output_tokens.
    reasoning, tokens, capped = split_output(cap, wanted, reasoning_tokens(req, default))
    if capped:
        tool = None
    if tool is not None:
        text = ""
    else:
        text = shaped.cut(tokens) if shaped is not None else reply_text(req.seed, tokens)
    hit = cached(request.app, req, prompt)
    usage = responses_usage(prompt, tokens + reasoning, hit, reasoning)
    status = "incomplete" if capped else "completed"
    resp_id = new_id("resp_")
    output = _output_items(req, text, tool, reasoning, status)
    if req.body.get("stream") is True:
        events = responses_events(req, output, status, usage, resp_id,
                                  config.stream_chunk_tokens)
        return await send_events(request, req, "openai", events, config.stream_chunk_tokens)
    await pause_ms(config.ttft_ms)
    await sleep_s(token_delay(config, usage["output_tokens"]))
    body = _response_obj(req, output, status, usage, resp_id)
    if req.fault is not None and req.fault.name == "cut":
        return await cut_plain(request, orjson.dumps(body))
    return json_response(request.app, "openai", req, body)


def _pieces(text: str, size: int = 12) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def responses_events(req: SimRequest, output: list[dict[str, Any]], status: str, usage: dict,
                     resp_id: str, per_chunk: int) -> list[bytes]:
    """The Responses SSE sequence: created, in_progress, then per output item
    output_item.added … its deltas … output_item.done, then completed/incomplete."""
    seq = iter(range(1_000_000))
    events: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        obj = {"type": kind, "sequence_number": next(seq), **fields}
        events.append(f"event: {kind}\ndata: ".encode() + orjson.dumps(obj) + b"\n\n")

    start = _response_obj(req, [], "in_progress", None, resp_id)
    emit("response.created", response=start)
    emit("response.in_progress", response=start)
    for index, item in enumerate(output):
        _item_events(emit, index, item, per_chunk)
    emit(f"response.{status}", response=_response_obj(req, output, status, usage, resp_id))
    return events


def _item_events(emit: Callable[..., None], index: int, item: dict[str, Any],
                 per_chunk: int) -> None:
    kind, item_id = item["type"], item["id"]
    if kind == "reasoning":
        emit("response.output_item.added", output_index=index,
             item={k: v for k, v in item.items() if k != "encrypted_content"})
    elif kind == "message":
        text = item["content"][0]["text"]
        emit("response.output_item.added", output_index=index,
             item={**item, "status": "in_progress", "content": []})
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        emit("response.content_part.added", **where,
             part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        for piece in split_reply(text, per_chunk):
            emit("response.output_text.delta", **where, delta=piece, logprobs=[])
        emit("response.output_text.done", **where, text=text, logprobs=[])
        emit("response.content_part.done", **where, part=item["content"][0])
    elif kind == "custom_tool_call":
        emit("response.output_item.added", output_index=index, item={**item, "input": ""})
        for piece in _pieces(item["input"]):
            emit("response.custom_tool_call_input.delta", item_id=item_id,
                 output_index=index, delta=piece)
        emit("response.custom_tool_call_input.done", item_id=item_id, output_index=index,
             input=item["input"])
    else:  # function_call
        emit("response.output_item.added", output_index=index,
             item={**item, "arguments": "", "status": "in_progress"})
        for piece in _pieces(item["arguments"]):
            emit("response.function_call_arguments.delta", item_id=item_id,
                 output_index=index, delta=piece)
        emit("response.function_call_arguments.done", item_id=item_id, output_index=index,
             name=item["name"], arguments=item["arguments"])
    emit("response.output_item.done", output_index=index, item=item)


# --------------------------------------------------------------------------- embeddings


def _vector(dims: int, seed: int) -> list[float]:
    raw = [((seed * 2654435761 + i * 40503) % 2001 - 1000) / 1000.0 for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await serve(request, "embeddings", oai.validate_embeddings_request, _embeddings)


async def _embeddings(request: web.Request, req: SimRequest, prompt: int) -> web.StreamResponse:
    config = request.app[CONFIG]
    inputs = req.body["input"]
    count = 1 if isinstance(inputs, str) or not isinstance(inputs[0], str | list) else len(inputs)
    dims = req.body.get("dimensions") or config.embedding_dimensions
    as_b64 = req.body.get("encoding_format") == "base64"
    data = []
    for i in range(count):
        vec = _vector(dims, req.seed + i)
        value: Any = (base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
                      if as_b64 else vec)
        data.append({"object": "embedding", "index": i, "embedding": value})
    body = {"object": "list", "model": req.model, "data": data,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
    return json_response(request.app, "openai", req, body)


# --------------------------------------------------------------------------- models


async def models(request: web.Request) -> web.Response:
    """GET /v1/models in the caller's protocol (anthropic-version header → Anthropic)."""
    config = request.app[CONFIG]
    rid = new_id("req_")
    if "anthropic-version" in request.headers:
        data = [{"type": "model", "id": m, "display_name": m,
                 "created_at": "2025-01-01T00:00:00Z"} for m in config.models]
        body: dict[str, Any] = {"data": data, "has_more": False,
                                "first_id": data[0]["id"] if data else None,
                                "last_id": data[-1]["id"] if data else None}
        headers = base_headers(request.app, "anthropic", rid)
    else:
        body = {"object": "list", "data": [
            {"id": m, "object": "model", "created": 1_700_000_000,
             "owned_by": "anthropic" if m.startswith("claude") else "openai"}
            for m in config.models]}
        headers = base_headers(request.app, "openai", rid)
    return web.Response(body=orjson.dumps(body), headers=headers, content_type="application/json")
