"""Relaying an upstream stream to the client, chunk by chunk as it arrives, through the
call's meter (the protocol's usage tap, which only removes the usage chunk the client
did not ask for). The stream's terminal event is held back until the call's row is
journaled, so every stream a client saw finish has its row.

The relay ends one of four ways: the upstream finished (settled to the provider's
usage), the client went away (settled with what was relayed, 499), the upstream broke
(the same, plus the protocol's error event), or the gateway is stopping (`cut`: the
same, with a shutdown error event)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tallygate.engine import Call, Engine
from tallygate.gateway.http import RawHeaders, Receive, Send, watch_disconnect
from tallygate.gateway.upstream import StreamBody

SSE_HEADERS: RawHeaders = [(b"content-type", b"text/event-stream"),
                           (b"cache-control", b"no-cache")]
_STOPPED = "The gateway is shutting down: the stream was ended early."
_BROKEN = "The upstream stream ended before completion."


class StreamRelay:
    def __init__(self, engine: Engine, call: Call, handle: StreamBody, receive: Receive,
                 send: Send, cut: asyncio.Event) -> None:
        self.engine = engine
        self.call = call
        self.handle = handle
        self.receive = receive
        self.send = send
        self.cut = cut
        self.tap = call.meter()
        self.held: list[bytes] = []  # the terminal event and what follows it

    async def run(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        await self.send({"type": "http.response.start", "status": 200,
                         "headers": [*SSE_HEADERS, *headers]})
        pumping = asyncio.ensure_future(self._pump())
        gone = watch_disconnect(self.receive)
        stop = asyncio.ensure_future(self.cut.wait())
        try:
            await asyncio.wait((pumping, gone, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnected = gone.done() and not pumping.done()
            stopped = stop.done() and not pumping.done() and not disconnected
            for task in (pumping, gone, stop):
                task.cancel()
            self.handle.close()
            # Let the cancellations land before looking at how the pump ended.
            await asyncio.gather(pumping, gone, stop, return_exceptions=True)
        broken = pumping.cancelled() or pumping.exception() is not None
        if disconnected:
            await self.engine.finish_stream(self.call, ended=False, disconnected=True)
        elif stopped or broken:
            await self._end_early(_STOPPED if stopped else _BROKEN,
                                  "shutdown" if stopped else "upstream_stream_error")
        else:
            tail = b"".join(self.held) + self.tap.flush()
            await self.engine.finish_stream(self.call, ended=True)
            await self.send({"type": "http.response.body", "body": tail})

    async def _pump(self) -> None:
        call, tap, send = self.call, self.tap, self.send
        terminal_at = call.adapter.terminal_at
        async for chunk in self.handle.chunks():
            data = tap.feed(chunk)
            if call.first_token_at is None and tap.first_token_seen:
                call.saw_first_token()
            if not self.held:
                cut = terminal_at(data)
                if cut >= 0:
                    data, rest = data[:cut], data[cut:]
                    self.held.append(rest)
            else:
                self.held.append(data)
                data = b""
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": True})

    async def _end_early(self, message: str, code: str) -> None:
        """Settle what was relayed, then tell the client in its protocol's stream format."""
        self.call.notes.stopped = code if code == "shutdown" else None
        await self.engine.finish_stream(self.call, ended=False, code=code)
        event = self.call.adapter.stream_error_event(self.call.ctx.route, code, message)
        await self.send({"type": "http.response.body",
                         "body": b"".join(self.held) + self.tap.flush() + event})
