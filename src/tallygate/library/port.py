"""The library's port: the wrapped SDK client's own method, called once, as the engine
asks (the gateway's port makes an HTTP request instead).

The body the SDK gets is the gateway's upstream body (`prepare_body` of the protocol
adapter), so both front doors send the provider the same request. A sync client is
called in a worker thread and an async one on the caller's event loop, so the engine's
loop never blocks on the provider. The SDK's own retries stay on (the engine does not
add its own on top); what the SDK finally raises comes back as the answer's fault and is
re-raised to the caller unchanged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from tallygate.engine import Answer, Call, transport_fault
from tallygate.errors import InvalidRequest, TallygateError, UpstreamError
from tallygate.types import Usage

DEFAULT_TIMEOUT = 600.0
# The SDK resource method answering each route.
_METHODS: dict[str, tuple[str, ...]] = {
    "chat/completions": ("chat", "completions", "create"),
    "responses": ("responses", "create"),
    "embeddings": ("embeddings", "create"),
    "messages": ("messages", "create"),
}


class SdkPort:
    def __init__(self, client: Any, protocol: str, *, is_async: bool,
                 options: Mapping[str, Any], loop: asyncio.AbstractEventLoop | None) -> None:
        self.client = client
        self.protocol = protocol
        self.is_async = is_async
        self.options = dict(options)
        self.loop = loop  # the caller's event loop (async clients)

    def provider_timeout(self, call: Call) -> float:
        del call
        timeout = getattr(self.client, "timeout", None)
        seconds = getattr(timeout, "read", timeout)
        return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else (
            DEFAULT_TIMEOUT)

    def method(self, route: str) -> Callable[..., Any]:
        target: Any = self.client
        for name in _METHODS[route]:
            target = getattr(target, name)
        return target  # type: ignore[no-any-return]

    def kwargs(self, call: Call) -> dict[str, Any]:
        """The admitted body as the SDK method's keyword arguments, plus the caller's
        request options (extra_headers, timeout …)."""
        raw = call.adapter.prepare_body(call.ctx.route, call.body, model=call.model.name,
                                        max_output=call.max_output)
        return {**orjson.loads(raw), **self.options}

    async def send(self, call: Call, *, timeout: float) -> Answer:
        del timeout  # the SDK's own timeout applies
        try:
            self._check_protocol(call)
            method, kwargs = self.method(call.ctx.route), self.kwargs(call)
        except TallygateError as exc:
            return Answer(exc.status, error=exc)
        try:
            if self.is_async:
                result = await self._on_caller_loop(method(**kwargs))
            else:
                result = await asyncio.to_thread(method, **kwargs)
        except Exception as exc:  # the SDK's error: classified, re-raised to the caller
            return self._failed(call, exc)
        if call.ctx.stream:
            return Answer(200, stream=result)
        return Answer(200, payload=result, usage=self._usage(call, result))

    async def _on_caller_loop(self, coro: Any) -> Any:
        if self.loop is None or self.loop is asyncio.get_running_loop():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def _check_protocol(self, call: Call) -> None:
        """A routed model must be one this client can call (as the gateway checks)."""
        provider = call.model.provider
        if provider in ("openai", "anthropic") and provider != self.protocol:
            raise InvalidRequest(
                f"Model {call.model.name!r} is served by {provider!r}; this is a wrapped "
                f"{self.protocol} client.", param="model")

    def _usage(self, call: Call, response: Any) -> Usage | None:
        usage_obj = getattr(response, "usage", None)
        dump = getattr(usage_obj, "model_dump", None)
        if not callable(dump):
            return None
        return call.adapter.usage_from_body(call.ctx.route,
                                            {"usage": dump(mode="json", exclude_none=True)})

    def _failed(self, call: Call, exc: Exception) -> Answer:
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            response = getattr(exc, "response", None)
            headers = dict(getattr(response, "headers", None) or {})
            body = getattr(exc, "body", None)  # the SDK's parsed error JSON, when it had one
            raw = body if isinstance(body, Mapping) else None
            if raw is not None and "error" not in raw:
                raw = {"error": raw}  # openai's SDK keeps only the inner error object
            fault = call.adapter.classify_error(status, raw, headers, now=time.time())
            return Answer(status, headers=headers, fault=fault, raised=exc)
        name = type(exc).__name__
        if "Timeout" in name or "Connection" in name:
            timed_out = "Timeout" in name
            error = UpstreamError(str(exc) or name, status=504 if timed_out else 502,
                                  timeout=timed_out)
            return Answer(error.upstream_status, error=error, fault=transport_fault(error),
                          raised=exc)
        return Answer(400, error=InvalidRequest(f"{name}: {exc}"), raised=exc)
