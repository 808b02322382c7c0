"""One proxied call's way to a usable upstream answer: retries (gateway/retry.py),
context-length recovery (halve the output cap, then trim the input when the feature
allows) and the feature's fallback models, each step noted in the row's `detail`.

Everything here happens before the first byte goes to the client: a stream is handed
back as soon as the upstream answers 200 and is never retried after that."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tallygate.config import Policy, Provider
from tallygate.engine import Admission, Engine
from tallygate.errors import InvalidRequest, TallygateError, UpstreamError
from tallygate.gateway.retry import RetryPlan, RetrySettings
from tallygate.gateway.upstream import StreamBody, Transport
from tallygate.providers import anthropic as anthropic_wire
from tallygate.providers import openai as openai_wire
from tallygate.providers.common import UpstreamFault

ANTHROPIC_VERSION = "2023-06-01"
RECOVERY_STEPS = 2  # halve the output cap, then trim the input


@dataclass(slots=True)
class Attempt:
    """What the upstream finally said: a 200 (body or open stream), its error answer,
    or a transport error (timeout, unreachable, no provider)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] | None = None
    handle: StreamBody | None = None
    fault: UpstreamFault | None = None
    error: TallygateError | None = None
    retries: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def worth_a_fallback(self) -> bool:
        if self.error is not None:
            return isinstance(self.error, UpstreamError)
        return self.fault is not None and (self.fault.retryable or self.fault.context_length)


def wire_of(protocol: str) -> Any:
    return anthropic_wire if protocol == "anthropic" else openai_wire


def _transport_fault(exc: UpstreamError) -> UpstreamFault:
    return UpstreamFault(status=exc.upstream_status, retryable=True, context_length=False,
                         retry_after=None, retry_at=None, type=None, code=exc.code,
                         message=exc.message)


class UpstreamCaller:
    def __init__(self, policy: Policy, engine: Engine, upstream: Transport,
                 settings: RetrySettings | None = None) -> None:
        self.policy = policy
        self.engine = engine
        self.upstream = upstream
        self.settings = settings or RetrySettings()

    # ------------------------------------------------------------ target

    def provider_of(self, protocol: str, adm: Admission) -> Provider:
        provider = self.policy.providers.get(adm.model.provider)
        if provider is None:
            raise InvalidRequest(
                f"No provider {adm.model.provider!r} is configured for model "
                f"{adm.model.name!r} (add it under `providers:`).", param="model")
        if provider.protocol != protocol:
            raise InvalidRequest(
                f"Model {adm.model.name!r} is served by {adm.model.provider!r}, which speaks "
                f"the {provider.protocol} protocol: call it on its own route.", param="model")
        return provider

    def request(
        self, protocol: str, route: str, adm: Admission, client_headers: Mapping[str, str]
    ) -> tuple[str, bytes, dict[str, str]]:
        """URL, body and headers of the upstream request for the admission's model."""
        provider = self.provider_of(protocol, adm)
        base = provider.base_url.rstrip("/")
        # identity: the body is relayed as received and parsed for usage, so it must not
        # come back compressed (aiohttp would otherwise offer gzip/deflate).
        headers = {"content-type": "application/json", "accept-encoding": "identity",
                   **provider.headers}
        secret = provider.api_key.get_secret_value() if provider.api_key else ""
        if protocol == "anthropic":
            url = f"{base}/v1/{route}"
            headers["x-api-key"] = secret
            headers["anthropic-version"] = ANTHROPIC_VERSION
            for name in ("anthropic-version", "anthropic-beta"):
                if name in client_headers:
                    headers[name] = client_headers[name]
        else:
            url = f"{base}/{route}"
            headers["authorization"] = f"Bearer {secret}"
        # A thinking budget may exceed max_tokens only with the interleaved-thinking beta.
        extra = ({"interleaved": anthropic_wire.interleaved_thinking(client_headers)}
                 if protocol == "anthropic" else {})
        body = wire_of(protocol).prepare_body(route, adm.body, model=adm.model.name,
                                              max_output=adm.max_output, **extra)
        return url, body, headers

    # ------------------------------------------------------------ one try

    async def once(self, protocol: str, route: str, adm: Admission,
                   client_headers: Mapping[str, str], *, stream: bool,
                   timeout: float) -> Attempt:
        try:
            url, body, headers = self.request(protocol, route, adm, client_headers)
            if stream:
                handle = await self.upstream.open_stream(url, body, headers, timeout=timeout)
                if handle.status == 200:
                    return Attempt(200, headers=handle.headers, handle=handle)
                status, raw, got = handle.status, await handle.read_all(), handle.headers
            else:
                started = time.perf_counter()
                resp = await self.upstream.post(url, body, headers, timeout=timeout)
                # Upstream time of the try that answered (metrics: upstream duration).
                adm.detail["upstream_ms"] = int((time.perf_counter() - started) * 1000)
                status, raw, got = resp.status, resp.body, resp.headers
                if status == 200:
                    return Attempt(200, raw, got)
        except UpstreamError as exc:
            return Attempt(exc.upstream_status, error=exc, fault=_transport_fault(exc))
        except TallygateError as exc:
            return Attempt(exc.status, error=exc)
        fault = wire_of(protocol).classify_error(status, raw, got, now=time.time())
        return Attempt(status, raw, got, fault=fault)

    # ------------------------------------------------------------ the whole call

    async def send(self, protocol: str, route: str, adm: Admission,
                   client_headers: Mapping[str, str], *, stream: bool) -> Attempt:
        """Retries, recovery, then fallbacks; `Attempt.retries` counts every extra try."""
        feature = self.policy.feature(adm.ctx.feature)
        timeout = self._provider_timeout(adm)
        plan = RetryPlan.for_call(self.settings, feature_retries=feature.retries,
                                  client_headers=client_headers, provider_timeout=timeout)
        if plan.max_retries < feature.retries:
            adm.detail["client_retrying"] = True
        result = await self._on_model(protocol, route, adm, client_headers, stream, plan)
        extra = result.retries
        if not result.ok and result.worth_a_fallback:
            for name in self.engine.fallback_models(adm):
                try:
                    reason = result.fault.code if result.fault and result.fault.code else (
                        f"upstream {result.status}")
                    await self.engine.move_to(adm, name, reason=reason or "upstream")
                except TallygateError as exc:
                    adm.detail.setdefault("fallback_refused", []).append({name: exc.code})
                    continue
                result = await self._on_model(protocol, route, adm, client_headers, stream, plan)
                extra += 1 + result.retries
                if result.ok or not result.worth_a_fallback:
                    break
        result.retries = extra
        return result

    def _provider_timeout(self, adm: Admission) -> float:
        provider = self.policy.providers.get(adm.model.provider)
        return provider.timeout if provider is not None else 600.0

    async def _on_model(self, protocol: str, route: str, adm: Admission,
                        client_headers: Mapping[str, str], stream: bool,
                        plan: RetryPlan) -> Attempt:
        """One model: retry transient faults, recover from context-length errors."""
        retries = recovered = 0
        while True:
            left = min(self._provider_timeout(adm), plan.remaining_time())
            attempt = await self.once(protocol, route, adm, client_headers, stream=stream,
                                      timeout=max(left, 0.001))
            attempt.retries = retries
            fault = attempt.fault
            if attempt.ok or fault is None:
                return attempt
            _note(adm, attempt)
            if fault.context_length:
                if recovered >= RECOVERY_STEPS or not await self._recover(adm, recovered):
                    return attempt
                recovered += 1
                retries += 1
                continue
            delay = plan.next_delay(fault.retry_after) if fault.retryable else None
            if delay is None:
                return attempt
            await plan.wait(delay)
            retries += 1

    async def _recover(self, adm: Admission, step: int) -> bool:
        """Step 0 halves the output cap; step 1 trims the input to ¾ when the feature's
        on_exceed allows trimming (trim or summarize)."""
        if step == 0 and adm.max_output and adm.max_output > 1:
            halved = adm.max_output // 2
            adm.detail.setdefault("halved", []).append({"from": adm.max_output, "to": halved})
            adm.max_output = halved
            return True
        if self.policy.feature(adm.ctx.feature).on_exceed == "reject":
            adm.detail["recovery"] = "input not trimmed: the feature's on_exceed is reject"
            return False
        before = adm.count.tokens
        if not await self.engine.trim_input(adm, before * 3 // 4):
            return False
        adm.detail.setdefault("trimmed_on_retry", []).append(
            {"from": before, "to": adm.count.tokens})
        return True


def _note(adm: Admission, attempt: Attempt) -> None:
    """One line per failed try: which model, what the upstream said."""
    fault = attempt.fault
    entry: dict[str, Any] = {"model": adm.model.name, "status": attempt.status}
    if fault is not None and fault.code:
        entry["code"] = fault.code
    if attempt.error is not None and attempt.error.details.get("timeout"):
        entry["timeout"] = True
    if fault is not None and fault.retry_after is not None:
        entry["retry_after"] = fault.retry_after
    adm.detail.setdefault("attempts", []).append(entry)
