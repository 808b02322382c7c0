"""One governed SDK call, the library's twin of gateway/proxy.py:

    SDK kwargs → JSON body → validate → Engine.admit (count, trim, clamp, route, reserve)
    → the SDK method called with the admitted body → settle to the SDK-reported usage,
    or release (fail) when the call raises — then the SDK's own result or exception.

The body handed to the SDK is the gateway's upstream body (`prepare_body` of the
protocol adapter), so both modes send the provider the same request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson

from tallygate.engine import Admission, CallContext, Engine
from tallygate.errors import InvalidRequest
from tallygate.providers import anthropic as anthropic_wire
from tallygate.providers import openai as openai_wire
from tallygate.providers.common import end_user
from tallygate.types import Usage

if TYPE_CHECKING:
    from tallygate.library import Attribution, Governor

# Keyword arguments of every SDK method that are request options, not body fields.
SDK_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


def wire_for(protocol: str) -> ModuleType:
    return anthropic_wire if protocol == "anthropic" else openai_wire


def _is_sentinel(value: Any) -> bool:
    """The SDKs' "argument not given" markers (NOT_GIVEN, omit) of either SDK."""
    return type(value).__name__ in ("NotGiven", "Omit")


def jsonable(value: Any) -> Any:
    """SDK arguments as plain JSON values: pydantic models (e.g. a previous reply's message
    appended to `messages`) are dumped, tuples and iterators become lists."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items() if not _is_sentinel(v)}
    if isinstance(value, list | tuple | Iterator):
        return [jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json", exclude_none=True)
    return value


def split_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON body, SDK request options)."""
    body: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for name, value in kwargs.items():
        if _is_sentinel(value):
            continue
        if name in SDK_OPTIONS:
            options[name] = value
        else:
            body[name] = jsonable(value)
    return body, options


def failure_of(exc: BaseException) -> tuple[int, str]:
    """(status, error code) for the ledger row of a call the SDK raised on."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        code = getattr(exc, "code", None)
        if not isinstance(code, str) or not code:
            body = getattr(exc, "body", None)
            fault = anthropic_wire.classify_error(status, body if isinstance(body, Mapping)
                                                  else None, {})
            code = fault.code or fault.type or "upstream"
        return status, code
    name = type(exc).__name__
    if "Timeout" in name:
        return 504, "upstream_timeout"
    if "Connection" in name:
        return 502, "upstream_unreachable"
    if isinstance(exc, InvalidRequest):
        return exc.status, exc.code
    return 499, "aborted"


@dataclass(frozen=True, slots=True)
class Binding:
    """A wrapped client's link to its Governor: protocol, sync/async, attribution."""

    gov: Governor
    protocol: str  # "openai" | "anthropic"
    attribution: Attribution
    is_async: bool

    @property
    def wire(self) -> ModuleType:
        return wire_for(self.protocol)

    # ------------------------------------------------------------------ preparing

    def context(self, route: str, body: Mapping[str, Any]) -> CallContext:
        who = self.attribution.resolved()
        return CallContext(
            protocol=self.protocol,
            route=route,
            feature=who.feature,
            user=who.user,
            plan=who.plan,
            run=who.run,
            step=who.step,
            step_attempt=who.attempt,
            stream=body.get("stream") is True,
            end_user=end_user(body),
        )

    def prepare(self, route: str, kwargs: Mapping[str, Any]
                ) -> tuple[CallContext, dict[str, Any], dict[str, Any]]:
        body, options = split_kwargs(kwargs)
        self.wire.validate_request(route, body)
        return self.context(route, body), body, options

    def sdk_kwargs(self, route: str, adm: Admission, options: Mapping[str, Any]
                   ) -> dict[str, Any]:
        """The admitted body (model, max tokens, trimmed turns; include_usage on chat
        streams) as keyword arguments, plus the caller's request options."""
        self.check_protocol(adm)
        raw = self.wire.prepare_body(route, adm.body, model=adm.model.name,
                                     max_output=adm.max_output)
        return {**orjson.loads(raw), **options}

    def check_protocol(self, adm: Admission) -> None:
        """A routed model must be one this client can call (as the gateway checks)."""
        provider = adm.model.provider
        configured = self.gov.policy.providers.get(provider)
        protocol = configured.protocol if configured is not None else provider
        if protocol in ("openai", "anthropic") and protocol != self.protocol:
            raise InvalidRequest(
                f"Model {adm.model.name!r} is served by {provider!r} ({protocol} protocol); "
                f"this is a wrapped {self.protocol} client.", param="model")

    def usage_of(self, route: str, adm: Admission, response: Any) -> tuple[Usage, bool]:
        """The SDK-reported usage; without one, what was held, marked estimated."""
        usage_obj = getattr(response, "usage", None)
        dump = getattr(usage_obj, "model_dump", None)
        usage = None
        if callable(dump):
            usage = self.wire.usage_from_body(route, {"usage": dump(mode="json",
                                                                    exclude_none=True)})
        if usage is None:
            return Usage(adm.count.tokens, adm.max_output or 0), False
        return usage, True

    # ------------------------------------------------------------------ sync

    def create(self, route: str, method: Callable[..., Any], kwargs: Mapping[str, Any],
               wrap_stream: Callable[[Any, Any], Any] | None = None) -> Any:
        from tallygate.library.streams import StreamMeter

        ctx, body, options = self.prepare(route, kwargs)
        adm: Admission = self.gov.call(Engine.admit, ctx, body)
        started = time.perf_counter()
        try:
            response = method(**self.sdk_kwargs(route, adm, options))
        except BaseException as exc:
            status, code = failure_of(exc)
            self.gov.call(Engine.fail, adm, status=status, error_code=code)
            raise
        if ctx.stream:
            meter = StreamMeter(self, route, adm, started)
            return (wrap_stream or _sync_stream)(response, meter)
        adm.detail["upstream_ms"] = int((time.perf_counter() - started) * 1000)
        usage, exact = self.usage_of(route, adm, response)
        self.gov.call(Engine.complete, adm, usage, status=200, exact=exact)
        return response

    # ------------------------------------------------------------------ async

    async def acreate(self, route: str, method: Callable[..., Any], kwargs: Mapping[str, Any],
                      wrap_stream: Callable[[Any, Any], Any] | None = None) -> Any:
        from tallygate.library.streams import StreamMeter

        ctx, body, options = self.prepare(route, kwargs)
        adm = await self.admit_async(ctx, body)
        started = time.perf_counter()
        try:
            response = await method(**self.sdk_kwargs(route, adm, options))
        except BaseException as exc:
            status, code = failure_of(exc)
            await self.gov.acall(Engine.fail, adm, status=status, error_code=code)
            raise
        if ctx.stream:
            meter = StreamMeter(self, route, adm, started)
            return (wrap_stream or _async_stream)(response, meter)
        adm.detail["upstream_ms"] = int((time.perf_counter() - started) * 1000)
        usage, exact = self.usage_of(route, adm, response)
        await self.gov.acall(Engine.complete, adm, usage, status=200, exact=exact)
        return response

    async def admit_async(self, ctx: CallContext, body: dict[str, Any]) -> Admission:
        """admit; if the caller is cancelled meanwhile, whatever got reserved is released."""
        engine = (await self.gov.aruntime()).engine
        fut = self.gov.submit(engine.admit(ctx, body))
        import asyncio

        try:
            return await asyncio.shield(asyncio.wrap_future(fut))
        except asyncio.CancelledError:
            fut.add_done_callback(lambda f: _release_late(self.gov, f))
            raise


def _release_late(gov: Governor, fut: Any) -> None:
    if fut.cancelled() or fut.exception() is not None:
        return
    gov.fire(Engine.fail, fut.result(), status=499, error_code="aborted")


def _sync_stream(response: Any, meter: Any) -> Any:
    from tallygate.library.streams import GovernedStream

    return GovernedStream(response, meter)


def _async_stream(response: Any, meter: Any) -> Any:
    from tallygate.library.streams import GovernedAsyncStream

    return GovernedAsyncStream(response, meter)


def is_async_client(client: Any, sync_cls: type, async_cls: type, what: str) -> bool:
    """Whether `client` is the SDK's async or sync class; InvalidRequest for anything else."""
    if isinstance(client, async_cls):
        return True
    if isinstance(client, sync_cls):
        return False
    raise InvalidRequest(
        f"{what} wraps an {sync_cls.__name__} or {async_cls.__name__} client, "
        f"got {type(client).__name__}.")
