"""Anthropic Messages wire protocol adapter (messages, messages/count_tokens). Pure.

Formats: the Anthropic API reference (messages, streaming, errors) and the anthropic SDK's
types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tallygate.errors import InvalidRequest
from tallygate.providers.common import (
    SSEEvent,
    StreamTap,
    UpstreamFault,
    check_int,
    check_messages,
    check_type,
    dumps,
    error_object,
    fault_of,
    json_type,
    normalise_route,
    require_model,
    require_object,
)
from tallygate.providers.stream_cut import MessagesCut
from tallygate.types import Usage

PROTOCOL = "anthropic"
# The roles whose shape the gateway checks (content required). Any other role — Claude
# Code's mid-conversation `system` turn (beta per-turn-control) — passes as sent.
ROLES = frozenset({"user", "assistant"})


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_usage_obj(usage: Any, prev: Usage | None = None) -> Usage | None:
    """Normalise an Anthropic usage object. Total input = input + cache writes + cache reads.

    `prev` is the usage known so far in a stream: message_delta usage is cumulative and may
    omit the input fields, so a missing field keeps the previous value (assign, not add)."""
    if not isinstance(usage, Mapping):
        return None
    prev = prev or Usage()
    plain = _int(usage["input_tokens"]) if "input_tokens" in usage else None
    written = (
        _int(usage["cache_creation_input_tokens"])
        if "cache_creation_input_tokens" in usage
        else None
    )
    read = _int(usage["cache_read_input_tokens"]) if "cache_read_input_tokens" in usage else None
    if plain is None and written is None and read is None:
        input_tokens = prev.input_tokens
    else:
        prev_plain = prev.input_tokens - prev.cached_tokens - prev.cache_write_tokens
        input_tokens = (
            (plain if plain is not None else prev_plain)
            + (written if written is not None else prev.cache_write_tokens)
            + (read if read is not None else prev.cached_tokens)
        )
    details = usage.get("output_tokens_details")
    thinking = (
        _int(details.get("thinking_tokens"))
        if isinstance(details, Mapping)
        else prev.reasoning_tokens
    )
    return Usage(
        input_tokens=input_tokens,
        output_tokens=_int(usage["output_tokens"]) if "output_tokens" in usage
        else prev.output_tokens,
        cached_tokens=read if read is not None else prev.cached_tokens,
        cache_write_tokens=written if written is not None else prev.cache_write_tokens,
        reasoning_tokens=thinking,
    )


def usage_from_body(route: str, body: Mapping[str, Any]) -> Usage | None:
    """Usage from a Messages response (or input tokens from a count_tokens response)."""
    if not isinstance(body, Mapping):
        return None
    if normalise_route(route) == "messages/count_tokens":
        return Usage(input_tokens=_int(body.get("input_tokens")))
    return usage_from_usage_obj(body.get("usage"))


# --------------------------------------------------------------------------- stream tap


_TEXT_DELTA = (b"event: content_block_delta\n", b"event: content_block_delta\r\n")


class MessagesStreamTap(StreamTap):
    """Messages SSE: message_start carries the input usage, each message_delta the
    cumulative usage (assigned, never added). Nothing is stripped."""

    def _defer(self, raw: bytes) -> bool:
        return self.first_token_seen and raw.startswith(_TEXT_DELTA)

    def _on_event(self, event: SSEEvent, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        kind = obj.get("type") or event.event
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):
                self._saw_text(delta.get("text"))
                self._saw_text(delta.get("partial_json"))
                self._saw_text(delta.get("thinking"))
        elif kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self.usage = usage_from_usage_obj(message.get("usage")) or self.usage
        elif kind == "message_delta":
            self.usage = usage_from_usage_obj(obj.get("usage"), self.usage) or self.usage
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.finish_reason = delta["stop_reason"]
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            err = obj.get("error")
            self.error = err if isinstance(err, dict) else obj
        return False


def stream_tap(
    route: str = "messages", *, client_wants_usage: bool = True, model: str | None = None,
    cuttable: bool = False, choices: int = 1, cut_id: str = "tallygate-cut",
) -> MessagesStreamTap:
    """`cuttable`: it can end the stream early (tap.cut_stream())."""
    del route, client_wants_usage, choices  # usage is always part of an Anthropic stream
    cut = MessagesCut(model=model or "", cut_id=cut_id) if cuttable else None
    return MessagesStreamTap(model=model, cut=cut)


# --------------------------------------------------------------------------- request body


def requested_max_output(route: str, body: Mapping[str, Any]) -> int | None:
    del route
    value = body.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# Extended thinking (`thinking: {type: enabled, budget_tokens: N}`): the budget must be at
# least this and, unless interleaved thinking is on, below max_tokens. Thinking tokens are
# output tokens: they count inside max_tokens, and in usage.output_tokens.
MIN_THINKING_BUDGET = 1024
INTERLEAVED_BETA = "interleaved-thinking-"


def thinking_budget(body: Mapping[str, Any]) -> int | None:
    """The extended-thinking budget a body asks for (None: no budgeted thinking;
    `adaptive` thinking has no budget and needs no fitting)."""
    thinking = body.get("thinking")
    if not isinstance(thinking, Mapping) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    return budget if isinstance(budget, int) and not isinstance(budget, bool) else None


def interleaved_thinking(headers: Mapping[str, str]) -> bool:
    """Is the interleaved-thinking beta on (`anthropic-beta`, comma-separated)? Then the
    thinking budget spans the whole turn and may exceed max_tokens."""
    betas = headers.get("anthropic-beta") or ""
    return any(b.strip().startswith(INTERLEAVED_BETA) for b in betas.split(","))


def output_floor(route: str, body: Mapping[str, Any]) -> tuple[int, str, str] | None:
    """The smallest output cap this request can work with when tallygate lowers it:
    (tokens, why, param), or None."""
    if normalise_route(route) != "messages" or thinking_budget(body) is None:
        return None
    return (MIN_THINKING_BUDGET + 1,
            f"extended thinking needs thinking.budget_tokens >= {MIN_THINKING_BUDGET} "
            "and below max_tokens; raise the cap or send the request without thinking",
            "thinking.budget_tokens")


def fit_thinking(body: Mapping[str, Any], max_tokens: int, *, interleaved: bool) -> Any:
    """`thinking` with its budget lowered below `max_tokens` (when tallygate lowered
    max_tokens). InvalidRequest when no budget of at least MIN_THINKING_BUDGET fits."""
    thinking = body.get("thinking")
    budget = thinking_budget(body)
    if budget is None or interleaved or budget < max_tokens:
        return thinking
    fitted = max_tokens - 1
    if fitted < MIN_THINKING_BUDGET:
        raise InvalidRequest(
            f"max_tokens was lowered to {max_tokens} by the policy's output cap, which "
            f"leaves no room for extended thinking: thinking.budget_tokens must be at "
            f"least {MIN_THINKING_BUDGET} and below max_tokens.",
            param="thinking.budget_tokens",
        )
    return {**thinking, "budget_tokens": fitted}


def prepare_body(
    route: str,
    body: Mapping[str, Any],
    *,
    model: str | None = None,
    max_output: int | None = None,
    messages: list[Any] | None = None,
    system: Any = None,
    interleaved: bool = False,
) -> bytes:
    """The upstream body: the client's, with only what policy changed replaced. When the
    output cap is lowered, a thinking budget that no longer fits is lowered with it
    (`interleaved`: the client turned the interleaved-thinking beta on, so it need not)."""
    out = dict(body)
    if model is not None:
        out["model"] = model
    if messages is not None:
        out["messages"] = messages
    if system is not None:
        out["system"] = system
    if max_output is not None and normalise_route(route) == "messages":
        requested = requested_max_output(route, body)
        out["max_tokens"] = max_output
        if requested is None or max_output < requested:
            thinking = fit_thinking(body, max_output, interleaved=interleaved)
            if thinking is not None:
                out["thinking"] = thinking
    return dumps(out)


# --------------------------------------------------------------------------- errors


def error_obj(
    code: str | None,
    message: str,
    *,
    type: str,
    param: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    err: dict[str, Any] = {"type": type, "message": message}
    if code:
        # Newer Anthropic bodies carry a machine code here (the SDK reads it as err.code).
        details: dict[str, Any] = {"error_code": code}
        if param:
            details["param"] = param
        err["details"] = details
    obj: dict[str, Any] = {"type": "error", "error": err}
    if request_id:
        obj["request_id"] = request_id
    return obj


def error_body(
    code: str | None,
    message: str,
    *,
    type: str,
    param: str | None = None,
    request_id: str | None = None,
) -> bytes:
    """{"type":"error","error":{"type","message"},"request_id"?}."""
    return dumps(error_obj(code, message, type=type, param=param, request_id=request_id))


def stream_error_event(
    code: str | None, message: str, *, type: str, param: str | None = None, **_: Any
) -> bytes:
    """`event: error` — the anthropic SDK raises an APIStatusError on it."""
    body = error_obj(code, message, type=type, param=param)
    return b"event: error\ndata: " + dumps(body) + b"\n\n"


_CONTEXT_MARKERS = ("prompt is too long", "exceed context limit", "context window")


def is_context_length_error(status: int, err: Mapping[str, Any]) -> bool:
    if status not in (400, 413):
        return False
    message = str(err.get("message") or "").lower()
    return any(marker in message for marker in _CONTEXT_MARKERS)


def classify_error(
    status: int,
    body: bytes | Mapping[str, Any] | None,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
) -> UpstreamFault:
    """Is this upstream error worth retrying, is it a context-length error, how long to wait."""
    err = error_object(body)
    details = err.get("details")
    code = details.get("error_code") if isinstance(details, Mapping) else None
    return fault_of(status, err, code, headers, now=now,
                    context_length=is_context_length_error(status, err),
                    final_code="enforced_spend_limit_reached")


# --------------------------------------------------------------------------- validation


def _check_system(body: Mapping[str, Any]) -> None:
    system = body.get("system")
    if system is None or isinstance(system, str):
        return
    if isinstance(system, list) and all(isinstance(b, dict) for b in system):
        return
    raise InvalidRequest(
        f"Invalid type for 'system': expected a string or an array of text blocks, "
        f"got {json_type(system)}.",
        param="system",
    )


def _check_contents(body: Mapping[str, Any]) -> None:
    for i, msg in enumerate(body["messages"]):
        if msg.get("role") in ROLES and msg.get("content") is None:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{i}].content'.",
                param=f"messages[{i}].content",
            )


def validate_count_tokens_request(body: Any) -> None:
    body = require_object(body)
    require_model(body)
    check_messages(body)
    _check_contents(body)
    _check_system(body)
    check_type(body, "tools", (list,), "an array")


def validate_messages_request(body: Any) -> None:
    """Raise InvalidRequest (with `param`) for a malformed Messages body."""
    validate_count_tokens_request(body)
    check_int(body, "max_tokens", minimum=1, required=True)
    check_type(body, "stream", (bool,), "a boolean")
    check_type(body, "stop_sequences", (list,), "an array")
    check_type(body, "temperature", (int, float), "a number")
    check_type(body, "metadata", (dict,), "an object")
    check_type(body, "thinking", (dict,), "an object")


def validate_request(route: str, body: Any) -> None:
    if normalise_route(route) == "messages/count_tokens":
        validate_count_tokens_request(body)
    else:
        validate_messages_request(body)
