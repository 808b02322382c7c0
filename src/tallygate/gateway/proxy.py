"""The proxied routes, a thin HTTP adapter around the engine:

    mint the call id → authenticate → read, bound and validate the request (a refusal
    past authentication gets its ledger row) → engine.run (or engine.start and relay the
    stream) → the answer, with the call's id and the limits' usage as headers.

Non-streaming bodies are forwarded as the upstream sent them; streams are relayed as
they arrive (gateway/relay.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tallygate.config import Policy
from tallygate.core.decide import ratelimit_headers
from tallygate.engine import Answer, Call, CallContext, Engine, bounds, new_call_id
from tallygate.engine.retry import client_retry_count, client_timeout
from tallygate.errors import InvalidRequest, ShuttingDown, TallygateError
from tallygate.gateway import auth
from tallygate.gateway.drain import Drain
from tallygate.gateway.errors import render_error
from tallygate.gateway.http import (
    CLIENT_GONE,
    ClientGone,
    Receive,
    Scope,
    Send,
    encode_headers,
    header_map,
    read_body,
    send_json,
)
from tallygate.gateway.port import UpstreamPort
from tallygate.gateway.relay import SSE_HEADERS, StreamRelay
from tallygate.gateway.upstream import passthrough_headers
from tallygate.keys.base import KeyStore
from tallygate.keys.model import VirtualKey
from tallygate.providers.base import adapter_for
from tallygate.providers.output_schema import apply_output_schema
from tallygate.providers.sessions import agent_attribution

CACHE_HEADER = "x-tallygate-cache"


@dataclass(frozen=True, slots=True)
class Route:
    protocol: str  # "openai" | "anthropic"
    name: str  # "chat/completions" | "responses" | "embeddings" | "messages"


class Proxy:
    def __init__(self, policy: Policy, engine: Engine, keys: KeyStore, port: UpstreamPort,
                 drain: Drain | None = None) -> None:
        self.policy = policy
        self.engine = engine
        self.keys = keys
        self.port = port
        self.drain = drain if drain is not None else Drain()
        self.cap = policy.server.max_body_bytes

    async def handle(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = CallContext(route.protocol, route.name, new_call_id())
        if self.drain.stopping:
            await self._send_error(send, ctx, ShuttingDown(
                "The gateway is shutting down: retry on another replica."))
            return
        with self.drain.track():
            await self._handle(route, ctx, scope, receive, send)

    async def _handle(self, route: Route, ctx: CallContext, scope: Scope, receive: Receive,
                      send: Send) -> None:
        headers = header_map(scope)
        started = self.engine.clock()
        try:
            key = await auth.authenticate(self.keys, headers,
                                          adapter_for(route.protocol).key_headers)
        except TallygateError as exc:  # nobody to charge a row to
            await self._send_error(send, ctx, exc)
            return
        try:
            body = await self._request(route, ctx, key, scope, receive, headers)
        except ClientGone:
            return
        except TallygateError as exc:  # invalid: recorded, so a client that cannot get
            if ctx.run is None:  # through shows up, charged to its agent's run if any
                ctx.run = agent_attribution(headers, None, self.policy.attribution).run
            self.engine.record_refusal(ctx, exc, started=started)
            await self._send_error(send, ctx, exc)
            return
        try:
            call, answer = await self._call(ctx, body, headers, receive, send)
        except TallygateError as exc:  # refused by the engine, which recorded it
            await self._send_error(send, ctx, exc)
            return
        if answer is not None:
            await self._answer(call, answer, send)

    async def _request(self, route: Route, ctx: CallContext, key: VirtualKey, scope: Scope,
                       receive: Receive, headers: Mapping[str, str]) -> dict[str, Any]:
        """The call's context filled in, and its body parsed and checked."""
        ctx.key_id, ctx.user, ctx.plan = key.id, key.user, key.plan
        ctx.key_limits = key.limits or None
        ctx.allowed_models = key.allows_model if key.models else None
        ctx.client_request_id = bounds.client_id(headers.get("x-tallygate-request-id"))
        ctx.feature = auth.resolve_feature(
            key, bounds.name(headers.get("x-tallygate-feature"), "X-Tallygate-Feature"))
        # No X-Tallygate-Run: a coding agent's own session id names the run (its header,
        # else its metadata: below, once the body is read; a refusal before that is
        # charged to the header's run in _handle).
        ctx.run = bounds.name(headers.get("x-tallygate-run"), "X-Tallygate-Run")
        ctx.step = bounds.name(headers.get("x-tallygate-step"), "X-Tallygate-Step")
        ctx.step_attempt = bounds.attempt(headers.get("x-tallygate-attempt"))
        auth.check_permission(key, ctx.feature, None)
        raw = await read_body(scope, receive, self.cap)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
        bounds.check_depth(body)
        adapter = adapter_for(route.protocol)
        adapter.validate_request(route.name, body)
        schema = self.policy.feature(ctx.feature).output_schema
        body, _ = apply_output_schema(route.protocol, route.name, ctx.feature or "default",
                                      schema, body)
        ctx.stream = body.get("stream") is True
        ctx.can_cut = True  # the relay meters every event and can end a stream cleanly
        who = agent_attribution(headers, body, self.policy.attribution)
        ctx.run = ctx.run or who.run
        ctx.end_user = who.end_user
        ctx.client_retries = client_retry_count(headers)
        ctx.client_timeout = client_timeout(headers)
        ctx.upstream_query = scope.get("query_string", b"").decode("latin-1")
        ctx.forward_headers = {n: headers[n] for n in adapter.forwarded_headers if n in headers}
        extensions = scope.get("extensions")
        if extensions:
            ctx.client_gone = extensions.get(CLIENT_GONE)
        return body

    async def _call(self, ctx: CallContext, body: dict[str, Any], headers: Mapping[str, str],
                    receive: Receive, send: Send) -> tuple[Call, Answer | None]:
        """Run the call; a stream is relayed here (None: nothing more to send)."""
        cache = _cache_choice(headers.get(CACHE_HEADER))
        if not ctx.stream:
            return await self.engine.run(ctx, body, self.port, cache=cache)
        call, answer = await self.engine.start(ctx, body, self.port, cache=cache)
        if answer.cached:
            await self._replay(call, answer, send)
            return call, None
        if answer.stream is None:
            return call, answer
        out = encode_headers(await self._headers(call, answer))
        async with self.engine.owning(call):
            with self.drain.relaying():
                await StreamRelay(self.engine, call, answer.stream, receive, send,
                                  self.drain.cut).run(out)
        return call, None

    # ------------------------------------------------------------ responses

    async def _answer(self, call: Call, answer: Answer, send: Send) -> None:
        if answer.error is not None:
            await self._send_error(send, call.ctx, answer.error)
            return
        out = encode_headers(await self._headers(call, answer))
        if answer.cached:
            out.append((CACHE_HEADER.encode(), b"hit"))
        await send_json(send, answer.status, answer.body, out)

    async def _headers(self, call: Call, answer: Answer) -> list[tuple[str, str]]:
        """Our id (and the caller's), the upstream's own, and the tightest limits."""
        usages = await self.engine.limit_usage(call) if not answer.cached else []
        out = [("x-tallygate-request-id", call.id)]
        if call.ctx.client_request_id:
            out.append(("x-tallygate-client-request-id", call.ctx.client_request_id))
        if call.trimmed_tokens:  # what policy changed, said where the client can see it
            out.append(("x-tallygate-trimmed", str(call.trimmed_tokens)))
        if call.notes.routed is not None or call.notes.fallback:
            out.append(("x-tallygate-routed-model", call.model.name))
        out += passthrough_headers(answer.headers)
        if usages:
            out += ratelimit_headers(usages, self.engine.clock()).items()
        return out

    async def _replay(self, call: Call, answer: Answer, send: Send) -> None:
        """A cache hit on a streaming request, replayed as the protocol's SSE."""
        stream = call.adapter.replay(call.ctx.route, answer.payload, call.body)
        headers = encode_headers([("x-tallygate-request-id", call.id), (CACHE_HEADER, "hit")])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*SSE_HEADERS, *headers]})
        await send({"type": "http.response.body", "body": stream})

    async def _send_error(self, send: Send, ctx: CallContext, exc: TallygateError) -> None:
        status, body, headers = render_error(exc, ctx.protocol, request_id=ctx.call_id,
                                             now=self.engine.clock())
        if ctx.client_request_id:
            headers = [*headers, ("x-tallygate-client-request-id", ctx.client_request_id)]
        await send_json(send, status, body, encode_headers(headers))


def _cache_choice(value: str | None) -> bool | None:
    asked = (value or "").strip().lower()
    return asked == "on" if asked in ("on", "off") else None

