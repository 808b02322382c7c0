"""A governed SDK call: the library's thin adapter around the engine.

    SDK kwargs → JSON body → bound and validate → engine.run (admit, send through the
    SDK port, recover, settle, record) on the Governor's loop → the SDK's own result, or
    its own exception.

A stream is started the same way (engine.start) and handed back wrapped, so the engine
meters it as the caller reads it (library/streams.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tallygate.engine import Answer, Call, CallContext, Engine, bounds, new_call_id
from tallygate.errors import InvalidRequest
from tallygate.library.attribution import Attribution
from tallygate.library.governing import GovernorPort
from tallygate.library.port import SdkPort
from tallygate.library.streams import GovernedAsyncStream, GovernedStream, StreamMeter
from tallygate.providers.base import adapter_for
from tallygate.providers.common import end_user

# Keyword arguments of every SDK method that are request options, not body fields.
SDK_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


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


@dataclass(frozen=True, slots=True)
class Binding:
    """A wrapped client's link to its Governor: the SDK client, its protocol, sync or
    async, and the attribution of its calls."""

    gov: GovernorPort
    protocol: str  # "openai" | "anthropic"
    attribution: Attribution
    is_async: bool
    client: Any  # the SDK client underneath

    def with_client(self, client: Any) -> Binding:
        return replace(self, client=client)

    # ------------------------------------------------------------------ preparing

    def context(self, route: str, body: Mapping[str, Any]) -> CallContext:
        who = self.attribution.resolved()
        # The SDK retries on its own (max_retries): the engine then does not add its own.
        retries = getattr(self.client, "max_retries", 0)
        return CallContext(
            protocol=self.protocol,
            route=route,
            call_id=new_call_id(),
            feature=bounds.name(who.feature, "feature"),
            user=bounds.name(who.user, "user"),
            plan=who.plan,
            run=bounds.name(who.run, "run"),
            step=bounds.name(who.step, "step"),
            step_attempt=bounds.attempt(who.attempt, "attempt"),
            stream=body.get("stream") is True,
            end_user=end_user(body),
            client_retries=1 if isinstance(retries, int) and retries > 0 else 0,
        )

    def prepare(self, route: str, kwargs: Mapping[str, Any]
                ) -> tuple[CallContext, dict[str, Any], SdkPort]:
        body, options = split_kwargs(kwargs)
        bounds.check_depth(body)
        adapter_for(self.protocol).validate_request(route, body)
        loop = _running_loop() if self.is_async else None
        port = SdkPort(self.client, self.protocol, is_async=self.is_async, options=options,
                       loop=loop)
        return self.context(route, body), body, port

    # ------------------------------------------------------------------ calling

    def create(self, route: str, kwargs: Mapping[str, Any],
               wrap_stream: Callable[[Any, Any], Any] | None = None) -> Any:
        ctx, body, port = self.prepare(route, kwargs)
        if ctx.stream:  # (a cached answer cannot be replayed as an SDK stream)
            call, answer = self.gov.call(Engine.start, ctx, body, port, cache=False)
            return self._stream(call, answer, wrap_stream, sync=True)
        _, answer = self.gov.call(Engine.run, ctx, body, port)
        return _result(answer, route)

    async def acreate(self, route: str, kwargs: Mapping[str, Any],
                      wrap_stream: Callable[[Any, Any], Any] | None = None) -> Any:
        ctx, body, port = self.prepare(route, kwargs)
        if ctx.stream:
            call, answer = await self.gov.acall(Engine.start, ctx, body, port, cache=False)
            return self._stream(call, answer, wrap_stream, sync=False)
        _, answer = await self.gov.acall(Engine.run, ctx, body, port)
        return _result(answer, route)

    def _stream(self, call: Call, answer: Answer, wrap: Callable[[Any, Any], Any] | None, *,
                sync: bool) -> Any:
        if answer.stream is None:
            return _result(answer, call.ctx.route)
        meter = StreamMeter(self.gov, call)
        if wrap is not None:
            return wrap(answer.stream, meter)
        return (GovernedStream if sync else GovernedAsyncStream)(answer.stream, meter)


def _result(answer: Answer, route: str) -> Any:
    """The SDK's own result, or what it raised (or tallygate's refusal); a cache hit as
    the SDK's response object."""
    if answer.raised is not None:
        raise answer.raised
    if answer.error is not None:
        raise answer.error
    if answer.cached:
        return revive(route, answer.payload)
    return answer.payload


def revive(route: str, payload: Any) -> Any:
    """A stored answer (JSON) as the SDK object the method would have returned."""
    if route == "messages":
        from anthropic.types import Message

        return Message.model_validate(payload)
    if route == "responses":
        from openai.types.responses import Response

        return Response.model_validate(payload)
    if route == "embeddings":
        from openai.types import CreateEmbeddingResponse

        return CreateEmbeddingResponse.model_validate(payload)
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate(payload)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def is_async_client(client: Any, sync_cls: type, async_cls: type, what: str) -> bool:
    """Whether `client` is the SDK's async or sync class; InvalidRequest for anything else."""
    if isinstance(client, async_cls):
        return True
    if isinstance(client, sync_cls):
        return False
    raise InvalidRequest(
        f"{what} wraps an {sync_cls.__name__} or {async_cls.__name__} client, "
        f"got {type(client).__name__}.")
