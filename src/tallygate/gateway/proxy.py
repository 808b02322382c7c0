"""The proxied routes: parse → authenticate → engine.admit → upstream → relay → settle.

Non-streaming bodies are forwarded as received; streams are relayed chunk by chunk as
they arrive, through the provider's usage tap (which only removes the usage chunk the
client did not ask for). Every admitted call is settled or released in `finally`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tallygate.cache import ResponseCache, open_cache
from tallygate.config import Policy
from tallygate.engine import Admission, CallContext, Engine
from tallygate.engine.ids import new_request_id
from tallygate.errors import InvalidRequest, TallygateError, UpstreamError
from tallygate.gateway import auth
from tallygate.gateway.cached import CacheGate
from tallygate.gateway.errors import render_error
from tallygate.gateway.http import (
    ClientGone,
    Receive,
    Scope,
    Send,
    encode_headers,
    header_map,
    read_body,
    send_json,
    watch_disconnect,
)
from tallygate.gateway.resilience import UpstreamCaller
from tallygate.gateway.retry import RetrySettings
from tallygate.gateway.summarize import GatewaySummarizer
from tallygate.gateway.upstream import StreamBody, Transport, passthrough_headers
from tallygate.keys.base import KeyStore
from tallygate.providers import anthropic as anthropic_wire
from tallygate.providers import openai as openai_wire
from tallygate.providers.common import end_user
from tallygate.providers.output_schema import apply_output_schema
from tallygate.types import Usage

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


@dataclass(frozen=True, slots=True)
class Route:
    protocol: str  # "openai" | "anthropic"
    name: str  # "chat/completions" | "responses" | "embeddings" | "messages"

    @property
    def wire(self) -> Any:
        return anthropic_wire if self.protocol == "anthropic" else openai_wire


_OPEN_FROM_POLICY: Any = object()


class Proxy:
    def __init__(
        self, policy: Policy, engine: Engine, keys: KeyStore, upstream: Transport, *,
        cache: ResponseCache | None = _OPEN_FROM_POLICY, retry: RetrySettings | None = None,
    ) -> None:
        self.policy = policy
        self.engine = engine
        self.keys = keys
        self.upstream = upstream
        self.cap = policy.server.max_body_bytes
        self.caller = UpstreamCaller(policy, engine, upstream, retry)
        self.cache = open_cache(policy) if cache is _OPEN_FROM_POLICY else cache
        self.cache_gate = CacheGate(policy, engine, self.cache)
        self.summarizer = GatewaySummarizer(policy, engine, self.caller, self.cache)
        if engine.summarizer is None:
            engine.summarizer = self.summarizer

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()

    async def handle(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_map(scope)
        started = self.engine.clock()
        lookup = None
        try:
            ctx, body = await self._admit_inputs(route, scope, receive, headers)
            if self.cache_gate.wanted(ctx, headers):
                lookup = await self.cache_gate.lookup(ctx, body)
                if lookup is not None and lookup.value is not None:
                    await self.cache_gate.serve(ctx, body, lookup, send, started)
                    return
            adm = await self.engine.admit(ctx, body)
        except ClientGone:
            return
        except TallygateError as exc:
            await self._send_error(send, exc, route.protocol, _request_id(headers))
            return
        store_key = lookup.key if lookup is not None and not ctx.stream else None
        try:
            if ctx.stream:
                await self._stream(route, adm, headers, receive, send)
            else:
                await self._forward(route, adm, headers, send, store_key)
        finally:
            if not adm.closed:
                await self.engine.fail(adm, status=499, error_code="client_disconnected")

    async def _admit_inputs(
        self, route: Route, scope: Scope, receive: Receive, headers: Mapping[str, str]
    ) -> tuple[CallContext, dict[str, Any]]:
        raw = await read_body(scope, receive, self.cap)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
        route.wire.validate_request(route.name, body)
        key = await auth.authenticate(self.keys, headers, anthropic=route.protocol == "anthropic")
        feature = auth.resolve_feature(key, headers.get("x-tallygate-feature"))
        auth.check_permission(key, feature, None)
        schema = self.policy.feature(feature).output_schema
        body, _ = apply_output_schema(route.protocol, route.name, feature or "default",
                                          schema, body)
        ctx = CallContext(
            protocol=route.protocol,
            route=route.name,
            feature=feature,
            request_id=_request_id(headers),
            key_id=key.id,
            user=key.user,
            end_user=end_user(body),
            plan=key.plan,
            run=headers.get("x-tallygate-run"),
            step=headers.get("x-tallygate-step"),
            step_attempt=_attempt(headers.get("x-tallygate-attempt")),
            key_limits=key.limits or None,
            allowed_models=key.allows_model if key.models else None,
            stream=body.get("stream") is True,
        )
        return ctx, body

    # ------------------------------------------------------------ upstream

    async def _forward(
        self, route: Route, adm: Admission, client_headers: Mapping[str, str], send: Send,
        store_key: str | None,
    ) -> None:
        result = await self.caller.send(route.protocol, route.name, adm, client_headers,
                                        stream=False)
        if result.error is not None:
            await self._fail(adm, result.error, route, send, retries=result.retries)
            return
        if result.status != 200:
            code = result.fault.code if result.fault and result.fault.code else "upstream"
            await self.engine.fail(adm, status=result.status, error_code=code,
                                   retries=result.retries)
        else:
            usage, exact = self._usage_of(route, adm, result.body)
            await self.engine.complete(adm, usage, status=200, exact=exact,
                                       retries=result.retries)
            if store_key is not None:
                await self.cache_gate.store(adm.ctx, store_key, result.body)
        # After settling, so x-ratelimit-remaining-* reflects the real usage.
        out_headers = await self._response_headers(adm, result.headers or {})
        await send_json(send, result.status, result.body, out_headers)

    def _usage_of(self, route: Route, adm: Admission, raw: bytes) -> tuple[Usage, bool]:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        usage = route.wire.usage_from_body(route.name, parsed) if isinstance(parsed, dict) else None
        if usage is None:  # no usage reported: charge what was held, marked estimated
            return Usage(adm.count.tokens, (adm.max_output or 0)), False
        return usage, True

    async def _stream(
        self,
        route: Route,
        adm: Admission,
        client_headers: Mapping[str, str],
        receive: Receive,
        send: Send,
    ) -> None:
        result = await self.caller.send(route.protocol, route.name, adm, client_headers,
                                        stream=True)
        if result.error is not None:
            await self._fail(adm, result.error, route, send, retries=result.retries)
            return
        if result.handle is None:
            code = result.fault.code if result.fault and result.fault.code else "upstream"
            await self.engine.fail(adm, status=result.status, error_code=code,
                                   retries=result.retries)
            out = await self._response_headers(adm, result.headers or {})
            await send_json(send, result.status, result.body, out)
            return
        await self._relay(route, adm, result.handle, receive, send, retries=result.retries)

    async def _relay(
        self, route: Route, adm: Admission, handle: StreamBody, receive: Receive, send: Send,
        *, retries: int = 0,
    ) -> None:
        tap = route.wire.stream_tap(
            route.name, client_wants_usage=openai_wire.client_wants_usage(adm.body),
            model=adm.model.name,
        )
        out = encode_headers(await self._stream_headers(adm, handle.headers))
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + out})
        first: list[float] = []
        held: list[bytes] = []  # the stream's terminal event: sent after the row is written

        async def pump() -> None:
            async for chunk in handle.chunks():
                data = tap.feed(chunk)
                if not first and tap.first_token_seen:
                    first.append(time.perf_counter())
                if not held:
                    cut = _terminal_at(data)
                    if cut >= 0:
                        data, rest = data[:cut], data[cut:]
                        held.append(rest)
                else:
                    held.append(data)
                    data = b""
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})

        started = time.perf_counter()
        pumping = asyncio.ensure_future(pump())
        gone = watch_disconnect(receive)
        try:
            await asyncio.wait((pumping, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnected = gone.done() and not pumping.done()
            for task in (pumping, gone):
                task.cancel()
            handle.close()
            # Let the cancellations land before looking at how the pump ended.
            await asyncio.gather(pumping, gone, return_exceptions=True)
        ttft = int((first[0] - started) * 1000) if first else None
        adm.detail["upstream_ms"] = int((time.perf_counter() - started) * 1000)
        failed = pumping.cancelled() or pumping.exception() is not None
        usage = tap.usage_so_far(input_tokens=adm.count.tokens)
        if disconnected or failed:
            code = "client_disconnected" if disconnected else "upstream_stream_error"
            await self.engine.fail(adm, status=200 if not disconnected else 499,
                                   error_code=code, usage=usage, ttft_ms=ttft, retries=retries)
            if not disconnected:  # tell the client in the protocol's own stream format
                event = route.wire.stream_error_event(
                    "upstream_stream_error", "The upstream stream ended before completion.",
                    type="api_error" if route.protocol == "anthropic" else "server_error",
                    route=route.name)
                await send({"type": "http.response.body",
                            "body": b"".join(held) + tap.flush() + event})
            return
        tail = b"".join(held) + tap.flush()
        # The ledger row is journaled inside complete(): only then does the client get
        # the terminal event, so every stream a client saw finish has its row.
        await self.engine.complete(adm, usage, status=200, ttft_ms=ttft, retries=retries,
                                   exact=tap.done and tap.usage is not None)
        await send({"type": "http.response.body", "body": tail})

    # ------------------------------------------------------------ responses

    async def _response_headers(
        self, adm: Admission, upstream_headers: Mapping[str, str]
    ) -> list[tuple[bytes, bytes]]:
        return encode_headers(await self._stream_headers(adm, upstream_headers))

    async def _stream_headers(
        self, adm: Admission, upstream_headers: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        limits = await self.engine.limit_headers(adm)
        return [
            ("x-tallygate-request-id", adm.ctx.request_id),
            *passthrough_headers(upstream_headers),
            *limits.items(),
        ]

    async def _fail(self, adm: Admission, exc: TallygateError, route: Route, send: Send,
                    *, retries: int = 0) -> None:
        status = exc.upstream_status if isinstance(exc, UpstreamError) else exc.status
        await self.engine.fail(adm, status=status, error_code=exc.code, retries=retries)
        await self._send_error(send, exc, route.protocol, adm.ctx.request_id)

    async def _send_error(
        self, send: Send, exc: TallygateError, protocol: str, request_id: str
    ) -> None:
        status, body, headers = render_error(exc, protocol, request_id=request_id,
                                             now=self.engine.clock())
        await send_json(send, status, body, encode_headers(headers))


def _request_id(headers: Mapping[str, str]) -> str:
    given = headers.get("x-tallygate-request-id")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return new_request_id()


def _attempt(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        raise InvalidRequest("X-Tallygate-Attempt must be an integer.") from None


# The events that end a stream: OpenAI chat, Responses, Anthropic Messages.
_TERMINAL_MARKERS = (b"data: [DONE]", b"event: response.completed", b"event: message_stop")


def _terminal_at(data: bytes) -> int:
    """Offset of the stream's terminal event in `data`, or -1."""
    found = [i for i in (data.find(m) for m in _TERMINAL_MARKERS) if i >= 0]
    return min(found) if found else -1
