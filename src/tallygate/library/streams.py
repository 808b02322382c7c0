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

import weakref
from typing import Any

import orjson

from tallygate.engine import Call, Engine
from tallygate.library.governing import GovernorPort


class StreamMeter:
    """Feeds a governed stream's events to the call's meter, and ends the call once."""

    def __init__(self, gov: GovernorPort, call: Call) -> None:
        self.gov = gov
        self.call = call
        self.tap = call.meter()
        self.settled = False

    def observe(self, item: Any) -> bool:
        """Meter one SDK event; False when the caller must not see it (the usage chunk
        the caller did not ask for)."""
        dump = getattr(item, "model_dump", None)
        if not callable(dump):
            return True
        data = orjson.dumps(dump(mode="json", exclude_none=True))
        forwarded = self.tap.feed(b"data: " + data + b"\n\n")
        if self.call.first_token_at is None and self.tap.first_token_seen:
            self.call.saw_first_token()
        return bool(forwarded)

    def ending(self, *, ended: bool, error: BaseException | None = None) -> Any:
        """The engine's `finish_stream` arguments for how the stream ended, once; None
        afterwards. `ended`: the SDK iterator finished normally (the OpenAI SDK swallows
        the `[DONE]` event, so reaching the end stands for it)."""
        if self.settled:
            return None
        self.settled = True
        if ended and self.call.ctx.route == "chat/completions":
            self.tap.feed(b"data: [DONE]\n\n")
        if ended and error is None:
            return {"ended": True}
        return {"ended": False, "disconnected": error is None}

    def settle_sync(self, *, ended: bool, error: BaseException | None = None) -> None:
        how = self.ending(ended=ended, error=error)
        if how is not None:
            self.gov.call(Engine.finish_stream, self.call, **how)

    async def settle_async(self, *, ended: bool, error: BaseException | None = None) -> None:
        how = self.ending(ended=ended, error=error)
        if how is not None:
            await self.gov.acall(Engine.finish_stream, self.call, **how)

    def abandon(self) -> None:
        """The stream object was dropped unread and unclosed: settle in the background."""
        how = self.ending(ended=False)
        if how is not None:
            self.gov.fire(Engine.finish_stream, self.call, **how)


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
