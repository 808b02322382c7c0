"""Relaying an upstream stream to the client, chunk by chunk as it arrives, through the
call's meter (the protocol's usage tap, which only removes the usage chunk the client
did not ask for). The stream's terminal event is held back until the call's row is
journaled, so every stream a client saw finish has its row.

The relay ends one of five ways: the upstream finished (settled to the provider's
usage), a streamed reservation could not grow (ended with the protocol's own length
stop, settled with what was relayed), the client went away (settled with what was
relayed, 499), the upstream broke (the same, plus the protocol's error event), or the
gateway is stopping (`cut`: the same, with a shutdown error event)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tallygate.engine import Call, Engine
from tallygate.gateway.http import RawHeaders, Receive, Send, watch_disconnect
from tallygate.gateway.upstream import StreamBody

SSE_HEADERS: RawHeaders = [(b"content-type", b"text/event-stream"),
                           (b"cache-control", b"no-cache")]
_CUT, _DONE = "cut", "done"  # how the pump ended
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
        if not broken and pumping.result() == _CUT:  # the hold could not grow
            await self._end_at_budget()
        elif disconnected:
            await self.engine.finish_stream(self.call, ended=False, disconnected=True)
        elif stopped or broken:
            await self._end_early(_STOPPED if stopped else _BROKEN,
                                  "shutdown" if stopped else "upstream_stream_error")
        else:
            tail = b"".join(self.held) + self.tap.flush()
            await self.engine.finish_stream(self.call, ended=True)
            await self.send({"type": "http.response.body", "body": tail})

    async def _pump(self) -> str:
        call, tap, send = self.call, self.tap, self.send
        terminal_at = call.adapter.terminal_at
        engine, streamed = self.engine, call.streamed
        async for chunk in self.handle.chunks():
            if streamed:  # one event at a time: the hold is checked between events
                data = b""
                for piece in _events(chunk):
                    data += tap.feed(piece)
                    if not await engine.keep_up(call):
                        if data:  # whole events only (a cuttable tap), inside the hold
                            await send({"type": "http.response.body", "body": data,
                                        "more_body": True})
                        return _CUT
            else:
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
        return _DONE

    async def _end_at_budget(self) -> None:
        """The limits have no room for more output: end the stream as the provider ends
        one at its max_tokens (finish_reason length / stop_reason max_tokens), settle
        what was relayed, and record it."""
        usage = self.call.usage_so_far()
        assert usage is not None
        ending = self.tap.cut_stream(usage, now=self.engine.clock())
        await self.engine.finish_stream(self.call, ended=False, cut=True)
        await self.send({"type": "http.response.body", "body": ending})

    async def _end_early(self, message: str, code: str) -> None:
        """Settle what was relayed, then tell the client in its protocol's stream format."""
        self.call.notes.stopped = code if code == "shutdown" else None
        await self.engine.finish_stream(self.call, ended=False, code=code)
        event = self.call.adapter.stream_error_event(self.call.ctx.route, code, message)
        await self.send({"type": "http.response.body",
                         "body": b"".join(self.held) + self.tap.flush() + event})


def _events(chunk: bytes) -> list[bytes]:
    """`chunk` in pieces that end at event boundaries (a burst of many events, as a fast
    upstream sends, is metered event by event); the last piece may be a partial event."""
    if chunk.count(b"\n\n") <= 1:
        return [chunk]
    parts = chunk.split(b"\n\n")
    pieces = [part + b"\n\n" for part in parts[:-1]]
    if parts[-1]:
        pieces.append(parts[-1])
    return pieces
