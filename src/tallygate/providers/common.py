"""Pieces shared by the protocol adapters: SSE framing, the stream-tap base,
upstream-error classification and request-validation primitives.

Pure: no network, no clock (times are passed in)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import orjson

from tallygate.errors import InvalidRequest
from tallygate.providers import sessions
from tallygate.types import Usage

if TYPE_CHECKING:
    from tallygate.providers.stream_cut import StreamCut

# --------------------------------------------------------------------------- routes


def normalise_route(route: str) -> str:
    """'/v1/chat/completions' → 'chat/completions' (adapters accept either form)."""
    route = route.strip("/")
    return route[3:] if route.startswith("v1/") else route


# --------------------------------------------------------------------------- SSE


@dataclass(slots=True)
class SSEEvent:
    """One parsed server-sent event and the exact bytes it arrived as."""

    raw: bytes
    event: str | None
    data: str | None  # data lines joined by "\n"; None when the event had no data line


def parse_event(raw: bytes) -> SSEEvent:
    name: str | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    return SSEEvent(raw, name, "\n".join(data) if data else None)


def _event_end(buf: bytes | bytearray, start: int) -> int:
    """Index just past the blank line ending the event that starts at `start`, or -1."""
    if buf.startswith(b"\n", start):
        return start + 1
    if buf.startswith(b"\r\n", start):
        return start + 2
    lf = buf.find(b"\n\n", start)
    crlf = buf.find(b"\n\r\n", start)
    if lf < 0 and crlf < 0:
        return -1
    if crlf < 0 or 0 <= lf < crlf:
        return lf + 2
    return crlf + 3


class StreamTap:
    """Fed raw upstream bytes as they arrive; returns the bytes to forward.

    Events may be split anywhere across chunks. When nothing needs stripping the
    chunk is forwarded at once, byte for byte; when an event may have to be
    dropped (see `_may_strip`), only complete events are forwarded and the
    unfinished tail waits for the next chunk.

    With a `cut` (providers/stream_cut.py) the tap forwards whole events only, tells the
    cut each event it forwards, and `cut_stream()` gives the bytes that end the stream
    as a length stop at this point."""

    def __init__(self, *, model: str | None = None, cut: StreamCut | None = None) -> None:
        self.model = model
        self.cut = cut
        self.usage: Usage | None = None
        self.done = False
        self.first_token_seen = False
        self.error: dict[str, Any] | None = None  # an error event the upstream sent
        self.finish_reason: str | None = None
        self._buf = bytearray()
        # Bytes fed so far: an upper bound of the output tokens, free to keep (byte-level
        # BPE never makes more tokens than bytes), so meters count exactly only near a bound.
        self.fed_bytes = 0
        self._text: list[str] = []
        self._deferred: list[bytes] = []  # plain text deltas, parsed only when needed

    # The subclasses decide per event: return True to drop it from the output.
    def _on_event(self, event: SSEEvent, obj: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _may_strip(self) -> bool:
        return self.cut is not None  # (a cut must fall between two events)

    def _defer(self, raw: bytes) -> bool:
        """True for an event recognised (by its bytes) as a plain text delta after the
        first token: only its text matters, and only if the stream ends without the
        provider's usage, so parsing it waits (`_catch_up`). Unsure → False: parse now."""
        del raw
        return False

    def _catch_up(self) -> None:
        deferred, self._deferred = self._deferred, []
        for raw in deferred:
            self._handle(raw)

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        self.fed_bytes += len(chunk)
        holding = self._may_strip()
        out = bytearray()
        for raw in self._complete_events(chunk):
            if self._defer(raw):
                self._deferred.append(raw)
                dropped = False
            else:
                dropped = self._handle(raw)
            if holding and not dropped:
                out += raw
        if holding:
            return bytes(out)
        return chunk

    def _complete_events(self, chunk: bytes) -> list[bytes]:
        """The events `chunk` completes (raw bytes, blank line included); the
        unfinished tail stays buffered. Without CR one C-level split does it."""
        self._buf += chunk
        if b"\r" not in self._buf:
            *events, tail = bytes(self._buf).split(b"\n\n")
            self._buf = bytearray(tail)
            return [event + b"\n\n" for event in events]
        events, start = [], 0
        while (end := _event_end(self._buf, start)) >= 0:
            events.append(bytes(self._buf[start:end]))
            start = end
        del self._buf[:start]
        return events

    def flush(self) -> bytes:
        """End of upstream: whatever is left (an unterminated event) is parsed and returned."""
        raw = bytes(self._buf)
        self._buf.clear()
        if not raw.strip():
            return raw if self._may_strip() else b""
        dropped = self._handle(raw)
        return b"" if dropped or not self._may_strip() else raw

    def _handle(self, raw: bytes) -> bool:
        event = parse_event(raw)
        if event.data is None:
            return False
        obj: Any = None
        if event.data[:1] in ("{", "["):
            try:
                obj = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                obj = None
        dropped = self._on_event(event, obj)
        if self.cut is not None and not dropped and isinstance(obj, dict):
            self.cut.observe(event.event, obj)
        return dropped

    def cut_stream(self, usage: Usage, *, now: float) -> bytes:
        """The events that end the stream here as a length stop (the tap needs a cut),
        `usage` reported as its figures (usage_so_far(), typically)."""
        if self.cut is None:
            raise RuntimeError("this stream tap was built without a cut")
        if self.done:  # the provider's own ending went out already
            return b""
        self._catch_up()  # the deferred events, so the cut knows all the text
        return self.cut.ending(usage, now=now)

    def _saw_text(self, text: Any) -> None:
        if isinstance(text, str) and text:
            self._text.append(text)
            self.first_token_seen = True

    @property
    def generated_text(self) -> str:
        """Everything the model produced so far (text, tool arguments, reasoning)."""
        self._catch_up()
        return "".join(self._text)

    def output_tokens_so_far(self, count: Callable[[str], int] | None = None) -> int:
        """Output tokens generated so far: the provider's figure when it sent one,
        else the generated text counted (`count`, default core.tokens), whichever is larger."""
        text = self.generated_text  # (first: it catches up on deferred events)
        reported = self.usage.output_tokens if self.usage else 0
        if not text:
            return reported
        counted = count(text) if count is not None else _count_text(text, self.model)
        return max(reported, counted)

    def usage_so_far(
        self, *, input_tokens: int, count: Callable[[str], int] | None = None
    ) -> Usage:
        """The usage to settle: the provider's once the stream is done, else what we know
        (the provider's input figure if it came, else `input_tokens`) plus output so far."""
        if self.done and self.usage is not None:  # (never in a deferred event)
            return self.usage
        base = self.usage or Usage(input_tokens=input_tokens)
        out = self.output_tokens_so_far(count)
        return Usage(
            input_tokens=base.input_tokens or input_tokens,
            output_tokens=out,
            cached_tokens=base.cached_tokens,
            cache_write_tokens=base.cache_write_tokens,
            reasoning_tokens=min(base.reasoning_tokens, out),
        )


def _count_text(text: str, model: str | None) -> int:
    from tallygate.core import tokens  # lazy: the adapters stay import-light

    return tokens.count_text(text, model).tokens


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class UpstreamFault:
    """What an upstream error means for the retry logic."""

    status: int
    retryable: bool
    context_length: bool
    retry_after: float | None  # seconds to wait, when the upstream said (or `now` was given)
    retry_at: float | None  # unix time from an HTTP-date retry-after
    type: str | None
    code: str | None
    message: str


def parse_json_body(body: bytes | Mapping[str, Any] | None) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        return body
    if not body:
        return {}
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def retry_after_from(
    headers: Mapping[str, str], now: float | None = None
) -> tuple[float | None, float | None]:
    """(seconds, absolute unix time) from `retry-after-ms` or `retry-after`
    (seconds or HTTP date), per the Stainless SDKs' order."""
    lower = {k.lower(): v for k, v in headers.items()}
    ms = _as_float(lower.get("retry-after-ms"))
    if ms is not None and ms >= 0:
        return ms / 1000.0, None
    raw = lower.get("retry-after")
    secs = _as_float(raw)
    if secs is not None and secs >= 0:
        return secs, None
    if raw:
        try:
            when = parsedate_to_datetime(raw).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None, None
        return (max(0.0, when - now) if now is not None else None), when
    return None, None


def _as_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def should_retry_status(status: int, headers: Mapping[str, str]) -> bool:
    """Stainless rule: x-should-retry first, then 408/409/429/5xx (529 included)."""
    flag = next((v for k, v in headers.items() if k.lower() == "x-should-retry"), None)
    if flag == "true":
        return True
    if flag == "false":
        return False
    return status in (408, 409, 429) or status >= 500


# --------------------------------------------------------------------------- validation


def require_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, got {json_type(body)}.", param=None
        )
    return body


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def require_model(body: Mapping[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest(
            f"Invalid type for 'model': expected a non-empty string, got {json_type(model)}.",
            param="model",
        )


def check_int(
    body: Mapping[str, Any], name: str, *, minimum: int, maximum: int | None = None,
    required: bool = False,
) -> None:
    """`name` must be absent/null (unless required) or an integer in [minimum, maximum]."""
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"Invalid type for '{name}': expected an integer, got {json_type(value)}.",
            param=name,
        )
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise InvalidRequest(
            f"Invalid value for '{name}': {value}. It must be {bound}.", param=name
        )


def check_type(body: Mapping[str, Any], name: str, types: tuple[type, ...], label: str) -> None:
    value = body.get(name)
    if value is None:
        return
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise InvalidRequest(
            f"Invalid type for '{name}': expected {label}, got {json_type(value)}.", param=name
        )


def check_messages(body: Mapping[str, Any], name: str = "messages") -> None:
    """Only what counting needs: a non-empty array of objects, each with a string role
    and content that is a string or an array when present. Roles the gateway does not
    know (a mid-conversation `system` turn, a newer role) pass to the provider as sent
    and are counted like a user turn; the provider is the judge of their meaning."""
    messages = body.get(name)
    if messages is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
    if not isinstance(messages, list):
        raise InvalidRequest(
            f"Invalid type for '{name}': expected an array, got {json_type(messages)}.",
            param=name,
        )
    if not messages:
        raise InvalidRequest(f"'{name}' must contain at least one message.", param=name)
    for i, msg in enumerate(messages):
        # (the place names are built only for an error: this runs for every message)
        if not isinstance(msg, dict):
            raise InvalidRequest(
                f"Invalid type for '{name}[{i}]': expected an object, got {json_type(msg)}.",
                param=f"{name}[{i}]",
            )
        role = msg.get("role")
        if not isinstance(role, str) or not role.strip():
            raise InvalidRequest(
                f"Invalid value for '{name}[{i}].role': expected a non-empty string, "
                f"got {json_type(role)}.",
                param=f"{name}[{i}].role",
            )
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(
                f"Invalid type for '{name}[{i}].content': expected a string or an array, "
                f"got {json_type(content)}.",
                param=f"{name}[{i}].content",
            )


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def end_user(body: Mapping[str, Any]) -> str | None:
    """The OpenAI `user` field or Anthropic `metadata.user_id` (for Claude Code's JSON
    form, its account or device, not the session): recorded, not enforced."""
    return sessions.end_user(body)


def error_object(body: bytes | Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The `error` object of an upstream error body (both protocols nest it there)."""
    err = parse_json_body(body).get("error")
    return err if isinstance(err, Mapping) else {}


def fault_of(
    status: int,
    err: Mapping[str, Any],
    code: Any,
    headers: Mapping[str, str],
    *,
    now: float | None,
    context_length: bool,
    final_code: str,
) -> UpstreamFault:
    """The UpstreamFault both adapters build; `final_code` is the protocol's error code
    that no retry can fix (a used-up quota or spend limit)."""
    retry_after, retry_at = retry_after_from(headers, now)
    code = code if isinstance(code, str) else None
    etype = err.get("type")
    return UpstreamFault(
        status=status,
        retryable=should_retry_status(status, headers) and code != final_code,
        context_length=context_length,
        retry_after=retry_after,
        retry_at=retry_at,
        type=etype if isinstance(etype, str) else None,
        code=code,
        message=str(err.get("message") or f"Upstream returned HTTP {status}."),
    )
