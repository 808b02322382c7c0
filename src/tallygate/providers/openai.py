"""OpenAI wire protocol adapter (chat/completions, responses, embeddings). Pure.

Formats: the OpenAI API reference and openai-python's types (tests/data/openai-openapi.json
holds the schemas the conformance tests check against)."""

from __future__ import annotations

import re
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
    normalise_route,
    require_model,
    require_object,
)
from tallygate.providers.stream_cut import StreamCut, cut_for
from tallygate.types import Usage

PROTOCOL = "openai"
# o-series and gpt-5+ reasoning models reject `max_tokens` (the API's own error:
# "not compatible with o-series"); so does any request that sets a reasoning effort.
_NEEDS_MAX_COMPLETION = re.compile(r"^(o\d|gpt-(?:[5-9]|[1-9]\d))")
# Responses: max_output_tokens is "an integer >= 16" (the OpenAPI description).
MIN_RESPONSES_OUTPUT = 16


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _details(usage: Mapping[str, Any], key: str, field: str) -> int:
    details = usage.get(key)
    return _int(details.get(field)) if isinstance(details, Mapping) else 0


def usage_from_usage_obj(usage: Any) -> Usage | None:
    """Normalise either a CompletionUsage (prompt_/completion_tokens) or a ResponseUsage."""
    if not isinstance(usage, Mapping):
        return None
    if "prompt_tokens" in usage:  # chat completions and embeddings
        return Usage(
            input_tokens=_int(usage.get("prompt_tokens")),
            output_tokens=_int(usage.get("completion_tokens")),
            cached_tokens=_details(usage, "prompt_tokens_details", "cached_tokens"),
            cache_write_tokens=_details(usage, "prompt_tokens_details", "cache_write_tokens"),
            reasoning_tokens=_details(usage, "completion_tokens_details", "reasoning_tokens"),
        )
    if "input_tokens" in usage:  # responses
        return Usage(
            input_tokens=_int(usage.get("input_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            cached_tokens=_details(usage, "input_tokens_details", "cached_tokens"),
            cache_write_tokens=_details(usage, "input_tokens_details", "cache_write_tokens"),
            reasoning_tokens=_details(usage, "output_tokens_details", "reasoning_tokens"),
        )
    return None


def usage_from_body(route: str, body: Mapping[str, Any]) -> Usage | None:
    """Usage from a non-streaming response body of any OpenAI route (None if absent)."""
    if not isinstance(body, Mapping):
        return None
    del route  # every route keeps usage at the top level; the shape tells which kind
    return usage_from_usage_obj(body.get("usage"))


# --------------------------------------------------------------------------- stream taps


class ChatStreamTap(StreamTap):
    """Chat completions SSE: usage comes in a final chunk with `choices: []`.

    strip_usage=True (the client did not ask for include_usage) drops exactly that
    event; every other byte is forwarded unchanged."""

    def __init__(self, *, strip_usage: bool = False, model: str | None = None,
                 cut: StreamCut | None = None) -> None:
        super().__init__(model=model, cut=cut)
        self.strip_usage = strip_usage

    def _may_strip(self) -> bool:
        return self.strip_usage or self.cut is not None

    def _defer(self, raw: bytes) -> bool:
        # A content chunk as OpenAI writes it (compact JSON): finish_reason and usage
        # still null, no error. Anything else is parsed at once.
        return (self.first_token_seen and b'"finish_reason":null' in raw
                and b'"finish_reason":"' not in raw
                and (b'"usage":null' in raw or b'"usage"' not in raw)
                and b'"error"' not in raw)  # ([DONE] has no finish_reason)

    def _on_event(self, event: SSEEvent, obj: Any) -> bool:
        if event.data is not None and event.data.startswith("[DONE]"):
            self.done = True
            return False
        if not isinstance(obj, dict):
            return False
        if obj.get("error"):
            self.error = obj["error"] if isinstance(obj["error"], dict) else {"message": obj}
            return False
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                self._on_choice(choice)
        usage = usage_from_usage_obj(obj.get("usage"))
        if usage is not None:
            self.usage = usage
            return self.strip_usage and choices == []
        return False

    def _on_choice(self, choice: Any) -> None:
        if not isinstance(choice, dict):
            return
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        self._saw_text(delta.get("content"))
        self._saw_text(delta.get("reasoning_content"))
        self._saw_text(delta.get("refusal"))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    self._saw_text(fn.get("name"))
                    self._saw_text(fn.get("arguments"))


_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_TEXT = frozenset(
    {
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.refusal.delta",
    }
)


_RESPONSES_TEXT_EVENTS = tuple(f"event: {kind}{end}".encode()
                               for kind in sorted(_RESPONSES_TEXT) for end in ("\n", "\r\n"))


class ResponsesStreamTap(StreamTap):
    """Responses API SSE: the final response object (with usage) arrives in
    response.completed / .incomplete / .failed. Nothing is stripped."""

    def _defer(self, raw: bytes) -> bool:
        return self.first_token_seen and raw.startswith(_RESPONSES_TEXT_EVENTS)

    def _on_event(self, event: SSEEvent, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        kind = obj.get("type") or event.event
        if kind in _RESPONSES_TEXT:
            self._saw_text(obj.get("delta"))
        elif kind in _RESPONSES_FINAL:
            self.done = True
            response = obj.get("response")
            if isinstance(response, dict):
                self.usage = usage_from_usage_obj(response.get("usage")) or self.usage
                self.finish_reason = response.get("status")
        elif kind == "error":
            self.error = obj
        return False


def stream_tap(
    route: str, *, client_wants_usage: bool = True, model: str | None = None,
    cuttable: bool = False, choices: int = 1, cut_id: str = "tallygate-cut",
) -> StreamTap:
    """The right tap for a streaming route; `cuttable`: it can end the stream early
    (tap.cut_stream(), providers/stream_cut.py)."""
    cut = cut_for(PROTOCOL, route, model=model or "", include_usage=client_wants_usage,
                  choices=choices, cut_id=cut_id) if cuttable else None
    if normalise_route(route) == "responses":
        return ResponsesStreamTap(model=model, cut=cut)
    return ChatStreamTap(strip_usage=not client_wants_usage, model=model, cut=cut)


def client_wants_usage(body: Mapping[str, Any]) -> bool:
    """Did the client ask for the final usage chunk (chat streams)?"""
    opts = body.get("stream_options")
    return isinstance(opts, Mapping) and opts.get("include_usage") is True


# --------------------------------------------------------------------------- request body


def max_output_field(route: str, body: Mapping[str, Any], model: str) -> str:
    """Which field carries the output cap: keep the one the client used."""
    route = normalise_route(route)
    if route == "responses":
        return "max_output_tokens"
    if body.get("max_completion_tokens") is not None:
        return "max_completion_tokens"
    if (body.get("max_tokens") is not None and not _NEEDS_MAX_COMPLETION.match(model)
            and not reasoning_requested(body)):
        return "max_tokens"
    return "max_completion_tokens"


def reasoning_requested(body: Mapping[str, Any]) -> bool:
    """A reasoning effort (chat `reasoning_effort`, Responses `reasoning.effort`) other
    than none. Reasoning tokens are output tokens: they count inside the output cap
    (max_completion_tokens / max_output_tokens) and in the usage's output figure."""
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping):
        effort = reasoning.get("effort", effort or "medium")
    return isinstance(effort, str) and effort != "none"


def output_floor(route: str, body: Mapping[str, Any]) -> tuple[int, str, str] | None:
    """The smallest output cap the provider accepts when tallygate lowers it:
    (tokens, why, param), or None."""
    del body
    if normalise_route(route) != "responses":
        return None
    return (MIN_RESPONSES_OUTPUT,
            f"the Responses API needs max_output_tokens >= {MIN_RESPONSES_OUTPUT} "
            "(reasoning tokens included)", "max_output_tokens")


def requested_max_output(route: str, body: Mapping[str, Any]) -> int | None:
    """The output cap the client asked for (None = not set)."""
    keys = (
        ("max_output_tokens",)
        if normalise_route(route) == "responses"
        else ("max_completion_tokens", "max_tokens")
    )
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def prepare_body(
    route: str,
    body: Mapping[str, Any],
    *,
    model: str | None = None,
    max_output: int | None = None,
    messages: list[Any] | None = None,
) -> bytes:
    """The upstream body: the client's, with only what policy changed replaced.

    For chat streams `stream_options.include_usage` is forced on so usage is always
    accounted (the tap strips that chunk again if the client did not ask for it)."""
    route = normalise_route(route)
    out = dict(body)
    if model is not None:
        out["model"] = model
    if messages is not None:
        out["input" if route == "responses" else "messages"] = messages
    if max_output is not None and route != "embeddings":
        field = max_output_field(route, body, str(out.get("model", "")))
        if field == "max_completion_tokens":
            out.pop("max_tokens", None)
        out[field] = max_output
    if route == "chat/completions" and out.get("stream") is True:
        opts = out.get("stream_options")
        opts = dict(opts) if isinstance(opts, Mapping) else {}
        opts["include_usage"] = True
        out["stream_options"] = opts
    return dumps(out)


# --------------------------------------------------------------------------- errors


def error_obj(
    code: str | None, message: str, *, type: str, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_body(code: str | None, message: str, *, type: str, param: str | None = None) -> bytes:
    """OpenAI's ErrorResponse: {"error":{"message","type","param","code"}}."""
    return dumps(error_obj(code, message, type=type, param=param))


def stream_error_event(
    code: str | None,
    message: str,
    *,
    type: str,
    param: str | None = None,
    route: str = "chat/completions",
    sequence_number: int = 0,
) -> bytes:
    """A mid-stream error in the route's SSE format (openai-python raises APIError on it)."""
    if normalise_route(route) == "responses":
        event = {
            "type": "error", "code": code, "message": message, "param": param,
            "sequence_number": sequence_number,
        }
        return b"event: error\ndata: " + dumps(event) + b"\n\n"
    return b"data: " + error_body(code, message, type=type, param=param) + b"\n\n"


def is_context_length_error(status: int, err: Mapping[str, Any]) -> bool:
    if status != 400:
        return False
    code = err.get("code")
    message = str(err.get("message") or "")
    return code == "context_length_exceeded" or "maximum context length" in message


def classify_error(
    status: int,
    body: bytes | Mapping[str, Any] | None,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
) -> UpstreamFault:
    """Is this upstream error worth retrying, is it a context-length error, how long to wait."""
    err = error_object(body)
    return fault_of(status, err, err.get("code"), headers, now=now,
                    context_length=is_context_length_error(status, err),
                    final_code="insufficient_quota")


# --------------------------------------------------------------------------- validation


def _common_checks(body: Any) -> Mapping[str, Any]:
    body = require_object(body)
    require_model(body)
    check_type(body, "stream", (bool,), "a boolean")
    check_type(body, "user", (str,), "a string")
    check_type(body, "metadata", (dict,), "an object")
    return body


def validate_chat_request(body: Any) -> None:
    """Raise InvalidRequest (with `param`) for a malformed chat/completions body."""
    body = _common_checks(body)
    check_messages(body)
    check_int(body, "max_tokens", minimum=1)
    check_int(body, "max_completion_tokens", minimum=1)
    check_int(body, "n", minimum=1, maximum=128)
    check_type(body, "stream_options", (dict,), "an object")
    check_type(body, "tools", (list,), "an array")
    check_type(body, "temperature", (int, float), "a number")
    check_type(body, "top_p", (int, float), "a number")
    check_type(body, "stop", (str, list), "a string or an array")
    check_type(body, "response_format", (dict,), "an object")


def validate_responses_request(body: Any) -> None:
    body = _common_checks(body)
    value = body.get("input")
    if value is not None and not isinstance(value, str | list):
        raise InvalidRequest(
            "Invalid type for 'input': expected a string or an array.", param="input"
        )
    check_int(body, "max_output_tokens", minimum=1)
    check_type(body, "instructions", (str,), "a string")
    check_type(body, "tools", (list,), "an array")


def validate_embeddings_request(body: Any) -> None:
    body = require_object(body)
    require_model(body)
    value = body.get("input")
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    if not _embedding_input_ok(value):
        raise InvalidRequest(
            "Invalid 'input': expected a string, an array of strings, an array of token "
            "integers or an array of such arrays (at most 2048 items, none empty).",
            param="input",
        )
    check_int(body, "dimensions", minimum=1)
    check_type(body, "encoding_format", (str,), "a string")


def _embedding_input_ok(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not value or len(value) > 2048:
        return False
    if all(isinstance(v, str) and v for v in value):
        return True
    if all(_is_token(v) for v in value):
        return True
    return all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value)


def _is_token(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_VALIDATORS = {
    "chat/completions": validate_chat_request,
    "responses": validate_responses_request,
    "embeddings": validate_embeddings_request,
}


def validate_request(route: str, body: Any) -> None:
    """Validate a body for any OpenAI route (unknown routes: only 'is an object')."""
    validator = _VALIDATORS.get(normalise_route(route))
    if validator is None:
        require_object(body)
        return
    validator(body)
