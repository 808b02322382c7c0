"""The simulated provider: an aiohttp app speaking the OpenAI and Anthropic wire
protocols (JSON shapes, SSE sequences, usage, error bodies, headers) with
deterministic replies, configurable timing and injectable faults.

Faults, per request with the header `x-sim-fault: NAME[:ARG]` or queued on the app
(`SimServer.push_faults`) for the next requests:
  429[:secs]  rate limited, with retry-after and retry-after-ms
  500         server error            529   overloaded (Anthropic overloaded_error)
  context_length_exceeded[:window]   the real 400 body of each protocol
  timeout[:secs]  sleep (default SimConfig.timeout_sleep_s) before answering
  cut[:chunks]    close the connection mid-body / after that many stream chunks
  quota           the provider's own final 429 (OpenAI insufficient_quota, Anthropic
                  enforced_spend_limit_reached), no retry-after
  absurd_usage    a 200 whose usage reports 2**63 input tokens (a broken provider)
Per-request overrides: `x-sim-reply-tokens`, `x-sim-cached-tokens`, `x-sim-reasoning-tokens`.
Tool calls, thinking blocks, reasoning items and prompt caches: agents.py. A request
asking for a JSON Schema gets a JSON instance of it: structured.py.
The handlers live in sim_openai.py and sim_anthropic.py."""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tallygate.errors import InvalidRequest
from tallygate.sim.agents import LruSet

# Common English words that are one token each in cl100k_base and o200k_base, with
# and without the leading space, so a reply of N words is exactly N tokens.
REPLY_WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "with", "as", "was", "on", "be",
    "at", "by", "this", "had", "not", "are", "but", "from", "or", "have", "an", "they", "which",
    "one", "you", "were", "her", "all", "she", "there", "would", "their", "we", "been", "has",
    "when", "who", "will", "more", "no", "if", "out", "so", "what", "up", "its", "about",
    "into", "than", "them", "can", "only", "other", "new", "some", "could", "time", "these",
    "two", "may", "then", "do", "first", "any", "my", "now", "such", "like", "our", "over",
    "man", "me", "even", "most", "made", "after", "also", "did", "many", "before", "must",
    "through", "back", "years", "where", "much", "your", "way", "well", "down", "should",
    "because", "each", "just", "those", "people", "how", "too", "little", "state", "good",
    "very", "make", "world", "still", "own", "see", "men", "work", "long", "get", "here",
    "between", "both", "life", "being", "under", "never", "day", "same", "another", "know",
    "while", "last", "us", "great", "old", "year", "off", "come", "since", "against", "go",
    "right", "used", "take", "three",
)

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "gpt-5-mini", "o4-mini",
    "text-embedding-3-small", "text-embedding-3-large",
    "claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1",
)


@dataclass
class SimConfig:
    """Timing, reply length and limits of the simulated provider."""

    latency_ms: float = 0.0  # before the response starts
    ttft_ms: float = 0.0  # streaming: after the headers, before the first token
    tokens_per_second: float = 0.0  # 0 = as fast as possible
    reply_tokens: int = 16  # reply length before max_tokens caps it
    thinking_tokens: int = 8  # thinking/reasoning tokens when the request turns it on
    stream_chunk_tokens: int = 1  # tokens per stream chunk
    embedding_dimensions: int = 16
    timeout_sleep_s: float = 30.0
    default_context_window: int = 128_000
    claude_context_window: int = 200_000
    context_windows: dict[str, int] = field(default_factory=dict)
    models: tuple[str, ...] = DEFAULT_MODELS
    ratelimit_requests: int = 10_000
    ratelimit_tokens: int = 30_000_000

    def context_window(self, model: str) -> int:
        if model in self.context_windows:
            return self.context_windows[model]
        return self.claude_context_window if model.startswith("claude") else (
            self.default_context_window
        )


@dataclass
class SimStats:
    """What reached the provider: tests assert e.g. that a refused call never did."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route, model)
    faults: Counter[str] = field(default_factory=Counter)
    bodies: deque[tuple[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    headers: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=200))
    queries: deque[str] = field(default_factory=lambda: deque(maxlen=200))  # query strings
    # Paced streams, as they ended: (events written, events in the whole answer). A client
    # that hung up early left the first short of the second.
    stream_writes: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=10_000))

    def count(self, route: str | None = None, model: str | None = None) -> int:
        return sum(
            n for (r, m), n in self.requests.items()
            if (route is None or r == route) and (model is None or m == model)
        )

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def last_body(self, route: str | None = None) -> Any:
        for r, body in reversed(self.bodies):
            if route is None or r == route:
                return body
        return None

    def reset(self) -> None:
        self.requests.clear()
        self.faults.clear()
        self.bodies.clear()
        self.headers.clear()
        self.queries.clear()


@dataclass(frozen=True, slots=True)
class Fault:
    name: str
    arg: float | None = None

    @classmethod
    def parse(cls, text: str) -> Fault:
        name, _, arg = text.strip().partition(":")
        try:
            value = float(arg) if arg else None
        except ValueError:
            value = None
        return cls(name.strip().lower(), value)


@dataclass(slots=True)
class SimRequest:
    """One parsed request, with everything the handlers need precomputed."""

    route: str
    body: dict[str, Any]
    raw: bytes
    model: str
    fault: Fault | None
    headers: Mapping[str, str]
    request_id: str
    seed: int


CONFIG: web.AppKey[SimConfig] = web.AppKey("sim_config", SimConfig)
STATS: web.AppKey[SimStats] = web.AppKey("sim_stats", SimStats)
FAULTS: web.AppKey[deque[Fault]] = web.AppKey("sim_faults", deque)
_COUNT_CACHE: web.AppKey[dict[tuple[str, bytes], int]] = web.AppKey("sim_counts", dict)
PROMPT_CACHE: web.AppKey[LruSet] = web.AppKey("sim_prompt_cache", LruSet)

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids):024x}"


# --------------------------------------------------------------------------- replies


def reply_text(seed: int, n_tokens: int) -> str:
    """Deterministic text of exactly `n_tokens` tokens (one word per token)."""
    words = REPLY_WORDS
    size = len(words)
    start = seed % size
    step = 1 + (seed >> 8) % 7
    parts = [words[(start + i * step) % size] for i in range(n_tokens)]
    if parts:
        parts[0] = parts[0].capitalize()
    return " ".join(parts)


def split_reply(text: str, per_chunk: int) -> list[str]:
    """Split text into stream deltas of `per_chunk` words (spaces kept on the left)."""
    words = text.split(" ")
    pieces = [words[0]] + [" " + w for w in words[1:]]
    per_chunk = max(1, per_chunk)
    return ["".join(pieces[i : i + per_chunk]) for i in range(0, len(pieces), per_chunk)]


def reply_budget(config: SimConfig, req: SimRequest, cap: int | None) -> tuple[int, bool]:
    """(tokens to generate, capped by max_tokens?)."""
    wanted = _header_int(req.headers, "x-sim-reply-tokens")
    wanted = config.reply_tokens if wanted is None else wanted
    wanted = max(1, wanted)
    if cap is not None and 0 < cap < wanted:
        return cap, True
    return wanted, False


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return None


def reasoning_tokens(req: SimRequest, default: int = 0) -> int:
    """The header's figure, else `default` (the config's when the request asks for
    thinking or reasoning)."""
    found = _header_int(req.headers, "x-sim-reasoning-tokens")
    return default if found is None else found


def header_cached(req: SimRequest) -> int | None:
    return _header_int(req.headers, "x-sim-cached-tokens")


def count_text(text: str, model: str) -> int:
    """Tokens of generated text (tool arguments), by the real counter; at least 1."""
    from tallygate.core import tokens

    return max(1, tokens.count_text(text, model).tokens)


def prompt_tokens(app: web.Application, protocol: str, req: SimRequest) -> int:
    """Prompt tokens by the real tokenizer (core.tokens), cached per body."""
    cache = app[_COUNT_CACHE]
    key = (req.route, req.raw)
    hit = cache.get(key)
    if hit is not None:
        return hit
    count = _count_prompt(protocol, req)
    if len(cache) > 4096:
        cache.clear()
    cache[key] = count
    return count


def _count_prompt(protocol: str, req: SimRequest) -> int:
    try:
        from tallygate.core import tokens
        from tallygate.core.catalog import resolve_model
    except ImportError:  # core.tokens not there: the cookbook formula over the text
        return _cookbook_count(req.body)
    try:
        info = resolve_model(req.model)
        return int(tokens.count_request(protocol, req.route, req.body, info).tokens)
    except Exception:  # a model the catalog does not know, odd content: still answer
        return _cookbook_count(req.body)


def _cookbook_count(body: dict[str, Any]) -> int:
    """3 per message + the tokens of every string in it + 3 (o200k_base)."""
    from tallygate.core import bpe

    enc = bpe.get_encoding("o200k_base")
    parts = [body.get(k) for k in ("system", "instructions", "input", "tools")]
    messages = body.get("messages")
    items = [*(messages if isinstance(messages, list) else []), *parts]
    return 3 + sum(3 + len(enc.encode_ordinary(" ".join(_strings(m)))) for m in items if m)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# --------------------------------------------------------------------------- timing


async def pause_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000.0)


def token_delay(config: SimConfig, n_tokens: int) -> float:
    tps = config.tokens_per_second
    return n_tokens / tps if tps > 0 else 0.0


# --------------------------------------------------------------------------- plumbing


class _RateHeaders:
    """x-ratelimit-* (OpenAI) and anthropic-ratelimit-* (RFC 3339 resets), cached per second."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._second = -1
        self._anthropic: dict[str, str] = {}
        req, tok = str(config.ratelimit_requests), str(config.ratelimit_tokens)
        self.openai = {
            "x-ratelimit-limit-requests": req,
            "x-ratelimit-limit-tokens": tok,
            "x-ratelimit-remaining-requests": str(config.ratelimit_requests - 1),
            "x-ratelimit-remaining-tokens": str(config.ratelimit_tokens - 1),
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-reset-tokens": "0s",
            "openai-version": "2020-10-01",
            "openai-processing-ms": "1",
        }

    def anthropic(self) -> dict[str, str]:
        now = int(time.time())
        if now != self._second:
            self._second = now
            reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 1))
            req, tok = str(self.config.ratelimit_requests), str(self.config.ratelimit_tokens)
            headers = {}
            for kind, limit in (("requests", req), ("tokens", tok), ("input-tokens", tok),
                                ("output-tokens", tok)):
                base = f"anthropic-ratelimit-{kind}"
                headers[f"{base}-limit"] = limit
                headers[f"{base}-remaining"] = str(int(limit) - 1)
                headers[f"{base}-reset"] = reset
            self._anthropic = headers
        return self._anthropic


RATE: web.AppKey[_RateHeaders] = web.AppKey("sim_rate", _RateHeaders)


def base_headers(app: web.Application, protocol: str, request_id: str) -> dict[str, str]:
    rate = app[RATE]
    if protocol == "anthropic":
        headers = dict(rate.anthropic())
        headers["request-id"] = request_id
    else:
        headers = dict(rate.openai)
        headers["x-request-id"] = request_id
    return headers


def json_response(
    app: web.Application, protocol: str, req: SimRequest, obj: Any, status: int = 200,
    extra: Mapping[str, str] | None = None,
) -> web.Response:
    headers = base_headers(app, protocol, req.request_id)
    if extra:
        headers.update(extra)
    return web.Response(
        body=orjson.dumps(obj), status=status, headers=headers, content_type="application/json"
    )


async def start_sse(
    request: web.Request, protocol: str, req: SimRequest
) -> web.StreamResponse:
    headers = base_headers(request.app, protocol, req.request_id)
    headers["Cache-Control"] = "no-cache"
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_type = "text/event-stream"
    resp.charset = "utf-8"
    await resp.prepare(request)
    return resp


async def cut_connection(request: web.Request, resp: web.StreamResponse | None = None) -> None:
    """Drop the TCP connection without ending the body: the client sees a broken stream."""
    del resp
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError


async def cut_plain(request: web.Request, body: bytes) -> web.StreamResponse:
    """Non-streaming cut: announce the full length, send half, drop the connection."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    await cut_connection(request, resp)
    return resp  # pragma: no cover - cut_connection raises


async def read_request(
    request: web.Request, route: str, validate: Callable[[Any], None]
) -> SimRequest:
    """Parse, validate and count one request; raises InvalidRequest for a bad body."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from exc
    validate(body)
    app = request.app
    fault = _take_fault(app, request.headers.get("x-sim-fault"))
    model = str(body.get("model", ""))
    stats = app[STATS]
    stats.requests[(route, model)] += 1
    stats.bodies.append((route, body))
    stats.headers.append(dict(request.headers))
    stats.queries.append(request.query_string)
    if fault is not None:
        stats.faults[fault.name] += 1
    seed = zlib.crc32(raw)
    return SimRequest(route, body, raw, model, fault, request.headers, new_id("req_"), seed)


def _take_fault(app: web.Application, header: str | None) -> Fault | None:
    if header:
        return Fault.parse(header)
    queue = app[FAULTS]
    return queue.popleft() if queue else None


ABSURD_TOKENS = 2**63  # past int64: what no provider can have counted


def reported_usage(req: SimRequest, usage: dict[str, Any], field: str) -> dict[str, Any]:
    """The usage an answer reports: the `absurd_usage` fault puts `ABSURD_TOKENS` in
    `field` (the input tokens of the protocol)."""
    if req.fault is None or req.fault.name != "absurd_usage":
        return usage
    return {**usage, field: ABSURD_TOKENS}


async def apply_pre_fault(fault: Fault | None, config: SimConfig) -> None:
    """The `timeout` fault: sleep past the client's timeout before answering."""
    if fault is not None and fault.name == "timeout":
        await asyncio.sleep(fault.arg if fault.arg is not None else config.timeout_sleep_s)


async def send_events(
    request: web.Request, req: SimRequest, protocol: str, events: list[bytes], per_chunk: int
) -> web.StreamResponse:
    """Write SSE events: all at once when there is no pacing, else one per token step.
    The `cut` fault drops the connection after `arg` (default 3) events."""
    config = request.app[CONFIG]
    resp = await start_sse(request, protocol, req)
    await pause_ms(config.ttft_ms)
    fault: Fault | None = req.fault
    cut_at = int(fault.arg or 3) if fault is not None and fault.name == "cut" else None
    if cut_at is not None:
        await resp.write(b"".join(events[:cut_at]))
        await cut_connection(request, resp)
    delay = token_delay(config, per_chunk)
    if delay <= 0:
        await resp.write(b"".join(events))
    else:
        written = 0
        try:
            for i, ev in enumerate(events):
                await resp.write(ev)
                written = i + 1
                if i + 1 < len(events):
                    await sleep_s(delay)
        finally:  # also when the client hangs up (a write fails or the handler is cancelled)
            request.app[STATS].stream_writes.append((written, len(events)))
    await resp.write_eof()
    return resp


async def sleep_s(seconds: float) -> None:
    await pause_ms(seconds * 1000.0)


