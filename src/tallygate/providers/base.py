"""One face for each wire protocol: everything the engine and the front doors need to
know about OpenAI's or Anthropic's API goes through a `WireAdapter`, chosen once per
call by `adapter_for(protocol)`. Nothing else branches on the protocol's name.

Pure: building bodies, URLs and headers, reading usage and errors, the stream taps and
the events that end a stream. No network (the front doors send), no clock."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Protocol

from tallygate.errors import ConfigError, TallygateError
from tallygate.providers import anthropic, openai
from tallygate.providers.common import StreamTap, UpstreamFault, normalise_route
from tallygate.providers.replay import anthropic_sse, openai_chat_sse
from tallygate.types import Usage

ANTHROPIC_VERSION = "2023-06-01"
# Client headers an Anthropic upstream must see as sent (betas switch request shapes on).
ANTHROPIC_FORWARDED = ("anthropic-version", "anthropic-beta")
# OpenAI's own "you are out of quota" type: the openai SDKs, Codex and most OpenAI
# clients stop on it at once instead of sleeping on a Retry-After (docs/gateway.md).
QUOTA_TYPE = "insufficient_quota"

# The events that end a stream: OpenAI chat, Responses, Anthropic Messages.
_TERMINAL_MARKERS = {
    "openai": (b"data: [DONE]", b"event: response.completed", b"event: response.incomplete",
               b"event: response.failed"),
    "anthropic": (b"event: message_stop",),
}


class WireAdapter(Protocol):
    """What tallygate knows about one provider protocol."""

    protocol: str
    stream_error_type: str  # the error `type` of a mid-stream failure event

    def validate_request(self, route: str, body: Any) -> None:
        """InvalidRequest unless `body` has what counting and enforcement need."""
        ...

    def requested_max_output(self, route: str, body: Mapping[str, Any]) -> int | None: ...

    def output_floor(self, route: str, body: Mapping[str, Any]) -> tuple[int, str, str] | None:
        """The smallest output cap the request works with when tallygate lowers it
        (tokens, why, param): a thinking budget's 1,024, the Responses minimum of 16."""
        ...

    def prepare_body(self, route: str, body: Mapping[str, Any], *, model: str,
                     max_output: int | None,
                     forward_headers: Mapping[str, str] | None = None) -> bytes:
        """The upstream body: the client's, with what policy changed replaced
        (`forward_headers`: the client headers the upstream sees, betas among them)."""
        ...

    def usage_from_body(self, route: str, body: Mapping[str, Any]) -> Usage | None: ...

    def stream_tap(self, route: str, body: Mapping[str, Any], *, model: str,
                   cuttable: bool = False, cut_id: str = "tallygate-cut") -> StreamTap:
        """The usage tap for a stream of `route` answering `body`; `cuttable`: it can end
        the stream early with the protocol's own length stop (tap.cut_stream())."""
        ...

    def classify_error(self, status: int, body: bytes | Mapping[str, Any] | None,
                       headers: Mapping[str, str], *, now: float | None) -> UpstreamFault: ...

    def error_body(self, code: str | None, message: str, *, type: str,
                   param: str | None = None) -> bytes: ...

    def refusal_body(self, exc: TallygateError, *, request_id: str, final: bool) -> bytes:
        """The body of tallygate's own error `exc` (`final`: a limit that will not clear
        soon, shaped so that clients stop instead of sleeping on a retry)."""
        ...

    @property
    def forwarded_headers(self) -> tuple[str, ...]:
        """Client headers the upstream must see as sent."""
        ...

    @property
    def key_headers(self) -> tuple[str, ...]:
        """Headers a client may carry its API key in, besides `Authorization: Bearer`."""
        ...

    def replay(self, route: str, answer: Any, body: Mapping[str, Any]) -> bytes:
        """A stored answer replayed as the route's SSE stream (a cache hit on a stream)."""
        ...

    def stream_error_event(self, route: str, code: str | None, message: str) -> bytes:
        """A mid-stream failure in the route's own SSE format."""
        ...

    def terminal_at(self, data: bytes) -> int:
        """Offset of the stream's terminal event in `data`, or -1."""
        ...

    def upstream_url(self, base_url: str, route: str) -> str: ...

    def upstream_headers(self, secret: str, client_headers: Mapping[str, str]) -> dict[str, str]:
        """Authentication and protocol headers of the upstream request."""
        ...

    def messages_key(self, route: str) -> str:
        """The body field holding the conversation's turns."""
        ...

    def summary_request(self, model: str, instruction: str, text: str,
                        max_tokens: int) -> tuple[str, dict[str, Any]]:
        """(route, body) of a call summarising `text`."""
        ...

    def summary_turn(self, text: str) -> dict[str, Any]:
        """The turn that stands for the summarised ones."""
        ...

    def reply_text(self, route: str, answer: Any) -> str:
        """The text of a non-streaming answer."""
        ...


def _terminal_at(markers: tuple[bytes, ...], data: bytes) -> int:
    found = [i for i in (data.find(m) for m in markers) if i >= 0]
    return min(found) if found else -1


class OpenAIAdapter:
    protocol = "openai"
    stream_error_type = "server_error"

    validate_request = staticmethod(openai.validate_request)
    requested_max_output = staticmethod(openai.requested_max_output)
    output_floor = staticmethod(openai.output_floor)
    usage_from_body = staticmethod(openai.usage_from_body)
    classify_error = staticmethod(openai.classify_error)
    error_body = staticmethod(openai.error_body)
    forwarded_headers: tuple[str, ...] = ()
    key_headers: tuple[str, ...] = ()

    def refusal_body(self, exc: TallygateError, *, request_id: str, final: bool) -> bytes:
        del request_id
        kind = QUOTA_TYPE if final else exc.openai_type
        return openai.error_body(exc.code, exc.message, type=kind, param=exc.param)

    def replay(self, route: str, answer: Any, body: Mapping[str, Any]) -> bytes:
        del route
        return openai_chat_sse(answer, include_usage=openai.client_wants_usage(body))

    def prepare_body(self, route: str, body: Mapping[str, Any], *, model: str,
                     max_output: int | None,
                     forward_headers: Mapping[str, str] | None = None) -> bytes:
        del forward_headers
        return openai.prepare_body(route, body, model=model, max_output=max_output)

    def stream_tap(self, route: str, body: Mapping[str, Any], *, model: str,
                   cuttable: bool = False, cut_id: str = "tallygate-cut") -> StreamTap:
        n = body.get("n")
        return openai.stream_tap(route, client_wants_usage=openai.client_wants_usage(body),
                                 model=model, cuttable=cuttable, cut_id=cut_id,
                                 choices=n if isinstance(n, int) and n > 0 else 1)

    def stream_error_event(self, route: str, code: str | None, message: str) -> bytes:
        return openai.stream_error_event(code, message, type=self.stream_error_type,
                                         route=route)

    def terminal_at(self, data: bytes) -> int:
        return _terminal_at(_TERMINAL_MARKERS["openai"], data)

    def upstream_url(self, base_url: str, route: str) -> str:
        return f"{base_url.rstrip('/')}/{normalise_route(route)}"

    def upstream_headers(self, secret: str, client_headers: Mapping[str, str]) -> dict[str, str]:
        del client_headers
        return {"authorization": f"Bearer {secret}"}

    def messages_key(self, route: str) -> str:
        return "input" if normalise_route(route) == "responses" else "messages"

    def summary_request(self, model: str, instruction: str, text: str,
                        max_tokens: int) -> tuple[str, dict[str, Any]]:
        return "chat/completions", {
            "model": model, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": instruction},
                         {"role": "user", "content": text}]}

    def summary_turn(self, text: str) -> dict[str, Any]:
        return {"role": "system", "content": text}

    def reply_text(self, route: str, answer: Any) -> str:
        if not isinstance(answer, dict):
            return ""
        if normalise_route(route) == "responses":
            texts = [part.get("text", "") for item in answer.get("output") or []
                     if isinstance(item, dict) for part in item.get("content") or []
                     if isinstance(part, dict) and isinstance(part.get("text"), str)]
            return "".join(texts)
        choices = answer.get("choices") or [{}]
        first = choices[0] if isinstance(choices[0], dict) else {}
        message = first.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        return content if isinstance(content, str) else ""


class AnthropicAdapter:
    protocol = "anthropic"
    stream_error_type = "api_error"

    validate_request = staticmethod(anthropic.validate_request)
    requested_max_output = staticmethod(anthropic.requested_max_output)
    output_floor = staticmethod(anthropic.output_floor)
    usage_from_body = staticmethod(anthropic.usage_from_body)
    classify_error = staticmethod(anthropic.classify_error)

    forwarded_headers = ANTHROPIC_FORWARDED
    key_headers = ("x-api-key",)  # anthropic SDK 0.x sends it; 2.x sends a Bearer token

    def error_body(self, code: str | None, message: str, *, type: str,
                   param: str | None = None) -> bytes:
        return anthropic.error_body(code, message, type=type, param=param)

    def refusal_body(self, exc: TallygateError, *, request_id: str, final: bool) -> bytes:
        del final  # the message says it will not clear soon; the type stays rate_limit_error
        return anthropic.error_body(exc.code, exc.message, type=exc.anthropic_type,
                                    param=exc.param, request_id=request_id)

    def replay(self, route: str, answer: Any, body: Mapping[str, Any]) -> bytes:
        del route, body
        return anthropic_sse(answer)

    def prepare_body(self, route: str, body: Mapping[str, Any], *, model: str,
                     max_output: int | None,
                     forward_headers: Mapping[str, str] | None = None) -> bytes:
        # A thinking budget may exceed max_tokens only with the interleaved-thinking beta.
        interleaved = anthropic.interleaved_thinking(forward_headers or {})
        return anthropic.prepare_body(route, body, model=model, max_output=max_output,
                                      interleaved=interleaved)

    def stream_tap(self, route: str, body: Mapping[str, Any], *, model: str,
                   cuttable: bool = False, cut_id: str = "tallygate-cut") -> StreamTap:
        del body
        return anthropic.stream_tap(route, model=model, cuttable=cuttable, cut_id=cut_id)

    def stream_error_event(self, route: str, code: str | None, message: str) -> bytes:
        del route
        return anthropic.stream_error_event(code, message, type=self.stream_error_type)

    def terminal_at(self, data: bytes) -> int:
        return _terminal_at(_TERMINAL_MARKERS["anthropic"], data)

    def upstream_url(self, base_url: str, route: str) -> str:
        return f"{base_url.rstrip('/')}/v1/{normalise_route(route)}"

    def upstream_headers(self, secret: str, client_headers: Mapping[str, str]) -> dict[str, str]:
        headers = {"x-api-key": secret, "anthropic-version": ANTHROPIC_VERSION}
        for name in ANTHROPIC_FORWARDED:
            if name in client_headers:
                headers[name] = client_headers[name]
        return headers

    def messages_key(self, route: str) -> str:
        del route
        return "messages"

    def summary_request(self, model: str, instruction: str, text: str,
                        max_tokens: int) -> tuple[str, dict[str, Any]]:
        return "messages", {"model": model, "system": instruction, "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": text}]}

    def summary_turn(self, text: str) -> dict[str, Any]:
        return {"role": "user", "content": text}  # a system turn is not a message here

    def reply_text(self, route: str, answer: Any) -> str:
        del route
        if not isinstance(answer, dict):
            return ""
        blocks = answer.get("content") or []
        return "".join(b.get("text", "") for b in blocks
                       if isinstance(b, dict) and isinstance(b.get("text"), str))


_ADAPTERS: dict[str, WireAdapter] = {"openai": OpenAIAdapter(), "anthropic": AnthropicAdapter()}
PROTOCOLS = tuple(_ADAPTERS)


def adapter_for(protocol: str) -> WireAdapter:
    """The adapter of `protocol`; an unknown protocol is an error, never OpenAI by default."""
    found = _ADAPTERS.get(protocol)
    if found is None:
        hint = difflib.get_close_matches(str(protocol)[:64], PROTOCOLS, n=1)
        guess = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"Unknown protocol {protocol!r}: expected one of "
                          f"{', '.join(PROTOCOLS)}.{guess}")
    return found
