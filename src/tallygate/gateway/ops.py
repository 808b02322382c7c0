"""Operational routes: health, the caller's models and usage, Anthropic token counting."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tallygate.config.models import key_rules
from tallygate.core.limits import Amounts, Identity, holds_for
from tallygate.core.tokens import acount_request
from tallygate.errors import InvalidRequest, TallygateError
from tallygate.gateway import auth, model_list
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
)
from tallygate.keys.base import KeyStore
from tallygate.providers import anthropic as anthropic_wire
from tallygate.providers.base import adapter_for
from tallygate.runtime import Runtime


def _json(status: int, obj: Any) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def _error(exc: TallygateError, protocol: str = "openai") -> Response:
    status, body, headers = render_error(exc, protocol, request_id="", now=time.time())
    return Response(body, status_code=status, media_type="application/json",
                    headers=dict(headers[1:]))


def routes(rt: Runtime, keys: KeyStore | None = None) -> list[Route]:
    """`keys`: the store keys are verified with (the auth-failure throttle wraps it)."""
    keys = keys or rt.keys
    protocols = {name: p.protocol for name, p in rt.policy.providers.items()}
    # Resolving every catalog name takes ~0.6 s: done once, on the first /v1/models, in a
    # thread (not at start-up, and never on the event loop).
    listing: list[dict[str, list[model_list.Listed]]] = []

    async def listed() -> dict[str, list[model_list.Listed]]:
        if not listing:
            found = await asyncio.to_thread(model_list.callable_models, rt.catalog,
                                            protocols, rt.policy.models)
            listing[:] = [found]
        return listing[0]

    async def healthz(_: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def models(request: Request) -> Response:
        # the anthropic SDK's models.list() sends anthropic-version; the openai SDK does not
        protocol = "anthropic" if "anthropic-version" in request.headers else "openai"
        try:
            key = await auth.authenticate(keys, request.headers,
                                          adapter_for(protocol).key_headers)
        except TallygateError as exc:
            return _error(exc, protocol)
        found = await listed()
        if protocol == "anthropic":
            return _json(200, model_list.anthropic_list(found["anthropic"], key))
        return _json(200, model_list.openai_list(found["openai"], key))

    async def usage(request: Request) -> Response:
        try:
            key = await auth.authenticate(keys, request.headers)
        except TallygateError as exc:
            return _error(exc)
        return _json(200, {"object": "tallygate.usage", "user": key.user, "plan": key.plan,
                           "limits": await _limits_of(rt, key, request)})

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/usage", usage, methods=["GET"]),
    ]


async def _limits_of(rt: Runtime, key: Any, request: Request) -> list[dict[str, Any]]:
    feature = auth.resolve_feature(key, request.headers.get("x-tallygate-feature"))
    identity = Identity(key.id, key.user, key.plan, request.headers.get("x-tallygate-run"),
                        key_rules(key.limits))
    model = request.query_params.get("model", "")
    holds = holds_for(rt.policy.limit_index, identity, feature=feature, model=model,
                      amounts=Amounts(0, 0, 0))
    now = time.time()
    out = []
    for hold in holds:
        used = await rt.store.usage(hold.key, limit=hold.limit, window=hold.window,
                                    rolling=hold.rolling, now=now)
        out.append({
            "key": hold.key, "metric": hold.metric.value, "window": hold.window.value,
            "rolling": hold.rolling, "limit": used.limit, "used": used.used,
            "reserved": used.reserved, "remaining": used.remaining,
            "reset_at": None if math.isinf(used.reset_at) else int(used.reset_at),
        })
    return out


class CountTokens:
    """POST /v1/messages/count_tokens, answered locally (no provider call, no budget).
    Claude's tokenizer is not public: the figure is tallygate's upper-bound estimate."""

    def __init__(self, rt: Runtime, keys: KeyStore | None = None) -> None:
        self.rt = rt
        self.keys = keys or rt.keys
        self.cap = rt.policy.server.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self.rt
        headers = header_map(scope)
        try:
            raw = await read_body(scope, receive, self.cap)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
            anthropic_wire.validate_request("messages/count_tokens", body)
            await auth.authenticate(self.keys, headers, adapter_for("anthropic").key_headers)
            model = rt.catalog.get(body["model"])
            count = await acount_request("anthropic", "messages/count_tokens", body, model)
        except ClientGone:
            return
        except TallygateError as exc:
            status, out, extra = render_error(exc, "anthropic", request_id="", now=time.time())
            await send_json(send, status, out, encode_headers(extra))
            return
        await send_json(send, 200, orjson.dumps({"input_tokens": count.tokens}),
                        encode_headers([("x-tallygate-estimated", str(not count.exact).lower())]))
