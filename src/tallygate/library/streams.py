"""Governed SDK streams: the SDK's Stream / AsyncStream, with usage metered as the caller
reads it and the reservation settled exactly once —

  * consumed to the end → settled to the provider-reported usage (OpenAI: the
    `include_usage` chunk, hidden again when the caller did not ask for it; Anthropic:
    message_start + the cumulative message_delta usage; Responses: response.completed);
  * closed early (close(), `with` exit, `break` then close, garbage collection) →
    settled with the input plus the text generated so far, counted (status 499);
  * raised mid-stream → settled the same way, recorded as an upstream stream error.

The metering reuses the gateway's stream taps (providers/*.stream_tap): each SDK event
is fed to the tap as the one SSE event it arrived as, so both modes agree on usage."""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any

import orjson

from tallygate.engine import Admission, Engine
from tallygate.providers import openai as openai_wire

if TYPE_CHECKING:
    from tallygate.library.binding import Binding


class StreamMeter:
    """What a stream has produced so far, and the one settlement it ends with."""

    def __init__(self, binding: Binding, route: str, adm: Admission, started: float) -> None:
        self.binding = binding
        self.adm = adm
        self.route = route
        self.tap = binding.wire.stream_tap(
            route, client_wants_usage=openai_wire.client_wants_usage(adm.body),
            model=adm.model.name,
        )
        self.started = started
        self.first_token: float | None = None
        self.settled = False

    def observe(self, item: Any) -> bool:
        """Meter one SDK event; False when the caller must not see it (the usage chunk
        the caller did not ask for)."""
        dump = getattr(item, "model_dump", None)
        if not callable(dump):
            return True
        data = orjson.dumps(dump(mode="json", exclude_none=True))
        forwarded = self.tap.feed(b"data: " + data + b"\n\n")
        if self.first_token is None and self.tap.first_token_seen:
            self.first_token = time.perf_counter()
        return bool(forwarded)

    def _ttft(self) -> int | None:
        if self.first_token is None:
            return None
        return int((self.first_token - self.started) * 1000)

    def settlement(self, *, ended: bool, error: BaseException | None = None) -> Any:
        """(engine method, args, kwargs) of the settlement, once; None afterwards.

        `ended`: the SDK iterator finished normally. The OpenAI SDK swallows the
        `[DONE]` event, so reaching the end stands for it."""
        if self.settled:
            return None
        self.settled = True
        if ended and self.route == "chat/completions":
            self.tap.feed(b"data: [DONE]\n\n")
        usage = self.tap.usage_so_far(input_tokens=self.adm.count.tokens)
        ttft = self._ttft()
        self.adm.detail["upstream_ms"] = int((time.perf_counter() - self.started) * 1000)
        if ended and error is None:
            exact = self.tap.done and self.tap.usage is not None
            return Engine.complete, (self.adm, usage), {"status": 200, "ttft_ms": ttft,
                                                        "exact": exact}
        if error is None:
            kw = {"status": 499, "error_code": "client_disconnected"}
        else:
            kw = {"status": 200, "error_code": "upstream_stream_error"}
        return Engine.fail, (self.adm,), {**kw, "usage": usage, "ttft_ms": ttft}

    def settle_sync(self, *, ended: bool, error: BaseException | None = None) -> None:
        plan = self.settlement(ended=ended, error=error)
        if plan is not None:
            method, args, kwargs = plan
            self.binding.gov.call(method, *args, **kwargs)

    async def settle_async(self, *, ended: bool, error: BaseException | None = None) -> None:
        plan = self.settlement(ended=ended, error=error)
        if plan is not None:
            method, args, kwargs = plan
            await self.binding.gov.acall(method, *args, **kwargs)

    def abandon(self) -> None:
        """The stream object was dropped unread and unclosed: settle in the background."""
        plan = self.settlement(ended=False)
        if plan is not None:
            method, args, kwargs = plan
            self.binding.gov.fire(method, *args, **kwargs)


class GovernedStream:
    """Iterates like the SDK's Stream; every other attribute is the SDK stream's."""

    def __init__(self, inner: Any, meter: StreamMeter) -> None:
        self._inner = inner
        self._meter = meter
        self._iter = iter(inner)
        self._finalizer = weakref.finalize(self, meter.abandon)

    def __iter__(self) -> GovernedStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                item = next(self._iter)
            except StopIteration:
                self._meter.settle_sync(ended=True)
                raise
            except BaseException as exc:
                self._meter.settle_sync(ended=False, error=exc)
                raise
            if self._meter.observe(item):
                return item

    def close(self) -> None:
        """Close the connection; a stream not read to the end settles what it produced."""
        try:
            self._inner.close()
        finally:
            self._meter.settle_sync(ended=False)

    def __enter__(self) -> GovernedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class GovernedAsyncStream:
    """Iterates like the SDK's AsyncStream; every other attribute is the SDK stream's."""

    def __init__(self, inner: Any, meter: StreamMeter) -> None:
        self._inner = inner
        self._meter = meter
        self._iter = inner.__aiter__()
        self._finalizer = weakref.finalize(self, meter.abandon)

    def __aiter__(self) -> GovernedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                item = await self._iter.__anext__()
            except StopAsyncIteration:
                await self._meter.settle_async(ended=True)
                raise
            except BaseException as exc:
                error = None if _is_cancel(exc) else exc
                await self._meter.settle_async(ended=False, error=error)
                raise
            if self._meter.observe(item):
                return item

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            await self._meter.settle_async(ended=False)

    async def __aenter__(self) -> GovernedAsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _is_cancel(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError | GeneratorExit)
