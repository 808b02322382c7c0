"""The gateway's port: one HTTP request to the call's provider, as the engine asks.

The URL, the authentication headers and the body come from the call's wire adapter;
the provider (base URL, secret, timeout) from the policy; the bytes travel over the
upstream transport (gateway/upstream/). Retries and fallbacks are the engine's."""

from __future__ import annotations

import time

from tallygate.config import Provider
from tallygate.engine import Answer, Call, transport_fault
from tallygate.errors import InvalidRequest, TallygateError, UpstreamError
from tallygate.gateway.upstream import Transport

DEFAULT_TIMEOUT = 600.0


class UpstreamPort:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport  # providers come from each call's own policy

    def provider_timeout(self, call: Call) -> float:
        provider = call.policy.providers.get(call.model.provider)
        return provider.timeout if provider is not None else DEFAULT_TIMEOUT

    def _provider(self, call: Call) -> Provider:
        provider = call.policy.providers.get(call.model.provider)
        if provider is None:
            raise InvalidRequest(
                f"No provider {call.model.provider!r} is configured for model "
                f"{call.model.name!r} (add it under `providers:`).", param="model")
        if provider.protocol != call.ctx.protocol:
            raise InvalidRequest(
                f"Model {call.model.name!r} is served by {call.model.provider!r}, which "
                f"speaks the {provider.protocol} protocol: call it on its own route.",
                param="model")
        return provider

    def _request(self, call: Call) -> tuple[str, bytes, dict[str, str]]:
        provider = self._provider(call)
        adapter, ctx = call.adapter, call.ctx
        url = adapter.upstream_url(provider.base_url, ctx.route)
        if ctx.upstream_query:
            url = f"{url}?{ctx.upstream_query}"
        secret = provider.api_key.get_secret_value() if provider.api_key else ""
        # identity: the body is relayed as received and parsed for usage, so it must not
        # come back compressed (aiohttp would otherwise offer gzip/deflate).
        headers = {"content-type": "application/json", "accept-encoding": "identity",
                   **provider.headers, **adapter.upstream_headers(secret, ctx.forward_headers)}
        body = adapter.prepare_body(ctx.route, call.body, model=call.model.name,
                                    max_output=call.max_output,
                                    forward_headers=ctx.forward_headers)
        return url, body, headers

    async def send(self, call: Call, *, timeout: float) -> Answer:
        try:
            url, body, headers = self._request(call)
            if call.ctx.stream:
                handle = await self.transport.open_stream(url, body, headers, timeout=timeout)
                if handle.status == 200:
                    return Answer(200, headers=handle.headers, stream=handle)
                status, raw, got = handle.status, await handle.read_all(), handle.headers
            else:
                resp = await self.transport.post(url, body, headers, timeout=timeout)
                status, raw, got = resp.status, resp.body, resp.headers
                if status == 200:
                    return Answer(200, raw, got)
        except UpstreamError as exc:
            return Answer(exc.upstream_status, error=exc, fault=transport_fault(exc))
        except TallygateError as exc:
            return Answer(exc.status, error=exc)
        fault = call.adapter.classify_error(status, raw, got, now=time.time())
        return Answer(status, raw, got, fault=fault)
