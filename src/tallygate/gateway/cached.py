"""The response cache on the proxied routes: opt-in check, lookup before any
reservation (after auth, feature and flag checks), serving a hit (as JSON or replayed
SSE) with a `cached` ledger row, and storing a fresh non-streaming answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tallygate.cache import ResponseCache, request_key
from tallygate.cache.replay import anthropic_sse, can_replay, openai_chat_sse
from tallygate.config import Policy
from tallygate.core import decide as verdict
from tallygate.engine import CallContext, Engine
from tallygate.errors import TallygateError
from tallygate.gateway.http import Send, encode_headers, send_json
from tallygate.providers import anthropic as anthropic_wire
from tallygate.providers import openai as openai_wire
from tallygate.types import ModelInfo, Usage

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
HEADER = "x-tallygate-cache"


@dataclass(slots=True)
class Lookup:
    key: str
    model: ModelInfo
    value: str | None  # the cached upstream body, when a hit


class CacheGate:
    def __init__(self, policy: Policy, engine: Engine, cache: ResponseCache | None) -> None:
        self.policy = policy
        self.engine = engine
        self.cache = cache

    def wanted(self, ctx: CallContext, headers: Mapping[str, str]) -> bool:
        if self.cache is None or ctx.route == "embeddings":
            return False
        asked = headers.get(HEADER, "").strip().lower()
        if asked in ("on", "off"):
            return asked == "on"
        return self.policy.feature(ctx.feature).cache

    async def lookup(self, ctx: CallContext, body: Mapping[str, Any]) -> Lookup | None:
        """None when the request must go through admission anyway (switched-off
        feature, unknown or forbidden model: admit answers those), else the key and,
        on a hit, the cached body."""
        assert self.cache is not None
        feature = ctx.feature or "default"
        if not await self.engine.flags.enabled(feature):
            return None
        requested = body.get("model") if isinstance(body.get("model"), str) else None
        try:
            name = verdict.resolve_model(requested, feature=ctx.feature, step=ctx.step,
                                         policy=self.policy)
            model = self.engine.catalog.get(name)
        except TallygateError:
            return None
        if ctx.allowed_models is not None and not ctx.allowed_models(model.name):
            return None
        key = request_key(ctx.protocol, ctx.route, model.name, body, feature)
        if ctx.stream and not can_replay(ctx.protocol, ctx.route):
            return None
        return Lookup(key, model, await self.cache.get(key))

    async def serve(self, ctx: CallContext, body: Mapping[str, Any], hit: Lookup,
                    send: Send, started: float) -> None:
        assert hit.value is not None
        raw = hit.value.encode()
        wire = anthropic_wire if ctx.protocol == "anthropic" else openai_wire
        parsed = orjson.loads(raw)
        usage = wire.usage_from_body(ctx.route, parsed) or Usage()
        requested = body.get("model") if isinstance(body.get("model"), str) else None
        self.engine.record_cached(ctx, hit.model, requested, usage, started,
                                  {"cache": "hit", "key": hit.key[:16]})
        headers = encode_headers([("x-tallygate-request-id", ctx.request_id), (HEADER, "hit")])
        if not ctx.stream:
            await send_json(send, 200, raw, headers)
            return
        if ctx.protocol == "anthropic":
            stream = anthropic_sse(parsed)
        else:
            stream = openai_chat_sse(parsed, include_usage=openai_wire.client_wants_usage(body))
        await send({"type": "http.response.start", "status": 200,
                    "headers": SSE_HEADERS + headers})
        await send({"type": "http.response.body", "body": stream})

    async def store(self, ctx: CallContext, key: str, raw: bytes) -> None:
        assert self.cache is not None
        ttl = self.policy.feature(ctx.feature).cache_ttl or self.policy.cache.ttl
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return
        await self.cache.put(key, text, ttl)
