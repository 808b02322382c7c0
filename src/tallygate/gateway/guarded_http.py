"""uvicorn's httptools protocol with the defences uvicorn lacks (docs/gateway.md,
"A server that defends itself"):

- a header deadline: the request line and headers must arrive within `header_timeout`
  of the connection opening (or of the first byte of the next request on a kept-alive
  connection) — a connection that sends nothing, or half a request, is closed;
- a body deadline: the whole body within `body_timeout` of the headers;
- the idle keep-alive timeout between requests (uvicorn's own `timeout_keep_alive`);
- a header size cap: a header section over `max_header_bytes` gets 431;
- a connection cap: past `max_connections` open connections, a new connection's
  request gets 503 and is closed; past twice the cap it is closed unanswered.

Every error is the API's own JSON (the Anthropic shape on `/v1/messages*`). Settings
travel on `GuardedConfig`, which uvicorn pickles into each worker process."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tallygate.gateway.http import CLIENT_GONE
from tallygate.providers import anthropic as anthropic_wire
from tallygate.providers import openai as openai_wire

log = logging.getLogger("tallygate.server")
LINGER_SECONDS = 2.0
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large",
           503: b"Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Guards:
    """What `server:` sets (config/models.py Server); seconds and bytes."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 5.0
    max_connections: int = 1024
    max_header_bytes: int = 64 * 1024


class GuardedConfig(uvicorn.Config):
    """uvicorn.Config carrying the guards to the protocol (and into worker processes)."""

    def __init__(self, app: Any, *, guards: Guards, **kwargs: Any) -> None:
        kwargs.setdefault("http", GuardedProtocol)
        super().__init__(app, timeout_keep_alive=guards.idle_timeout, **kwargs)
        self.guards = guards


def error_response(status: int, code: str, message: str, path: bytes) -> bytes:
    """A whole HTTP/1.1 response with the API's error JSON; the connection closes."""
    if path.startswith(b"/v1/messages"):
        kind = "overloaded_error" if status == 503 else "invalid_request_error"
        body = anthropic_wire.error_body(code, message, type=kind, param=None, request_id="")
    else:
        kind = "server_error" if status == 503 else "invalid_request_error"
        body = openai_wire.error_body(code, message, type=kind, param=None)
    head = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Error")),
            b"content-type: application/json",
            b"content-length: %d" % len(body), b"connection: close"]
    if status == 503:
        head.append(b"retry-after: 1")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _Count:
    """Admitted connections of one server (one per worker process)."""

    __slots__ = ("admitted", "waiting", "warned_at")

    def __init__(self) -> None:
        self.admitted = 0
        self.waiting = 0  # over the cap, waiting for their request to be refused
        self.warned_at = float("-inf")


WARN_EVERY = 10.0


def _warn_full(count: _Count, cap: int) -> None:
    """One log line per WARN_EVERY seconds while connections are refused."""
    now = time.monotonic()
    if now - count.warned_at >= WARN_EVERY:
        count.warned_at = now
        log.warning("connection limit reached: %d open (server.max_connections); "
                    "refusing new connections with 503", cap)


class OneWriteTransport:
    """A response's transport that sends a fixed-length answer's head together with its
    body: uvicorn writes them apart, two system calls and two TCP segments (with
    TCP_NODELAY), so the client wakes up twice for one answer. A streamed (chunked)
    answer's head, a `100 Continue` and anything after the body go out at once."""

    __slots__ = ("_head", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._head: bytes | None = None

    def gone(self) -> bool:
        """The client closed the connection (or it was closed): nothing sent reaches it."""
        return self.transport.is_closing()

    def write(self, data: bytes) -> None:
        head, self._head = self._head, None
        if head is not None:
            self.transport.write(head + data)
        elif data.startswith(b"HTTP/1.1 ") and b"\r\ncontent-length: " in data \
                and not data.startswith(b"HTTP/1.1 100 "):
            self._head = data  # (the body follows within the same step)
        else:
            self.transport.write(data)

    def close(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            self.transport.write(head)
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class GuardedProtocol(HttpToolsProtocol):
    def __init__(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guards: Guards = getattr(config, "guards", Guards())
        count = getattr(server_state, "tallygate_count", None)
        if count is None:
            count = server_state.tallygate_count = _Count()
        self.count: _Count = count
        self.over_cap = False
        self.admitted = False
        self.in_headers = True
        self.header_bytes = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.discarding = False  # refused: the rest of what the client sends is dropped

    # -- connection ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        g, count = self.guards, self.count
        if count.admitted < g.max_connections:
            count.admitted += 1
            self.admitted = True
            self._arm(g.header_timeout, self._header_deadline)
        elif count.waiting < g.max_connections:
            count.waiting += 1
            self.over_cap = True  # answered 503 once its request line arrives
            self._arm(min(g.header_timeout, 1.0), self._close)
            _warn_full(count, g.max_connections)
        else:
            transport.close()  # far over the cap: no descriptor is kept for it
            _warn_full(count, g.max_connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.admitted:
            self.count.admitted -= 1
            self.admitted = False
        elif self.over_cap:
            self.count.waiting -= 1
            self.over_cap = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        if self.in_headers:
            self.header_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing() or self.discarding:
            return
        if self.in_headers and self.header_bytes > self.guards.max_header_bytes:
            self._refuse(431, "request_header_fields_too_large",
                         f"The request headers exceed {self.guards.max_header_bytes} bytes.")

    # -- parser callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_headers = True
        self.header_bytes = max(self.header_bytes, 1)  # a byte of this request came
        if self.deadline is None:  # the next request on a kept-alive connection
            self._arm(self.guards.header_timeout, self._header_deadline)

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self._disarm()
        size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
        if size > self.guards.max_header_bytes:
            self._refuse(431, "request_header_fields_too_large",
                         f"The request headers exceed {self.guards.max_header_bytes} bytes.")
            return
        if self.over_cap:
            self._refuse(503, "server_busy",
                         "The gateway is at its connection limit: retry shortly.")
            return
        self.header_bytes = 0
        super().on_headers_complete()
        if not self._body_done():
            self._arm(self.guards.body_timeout, self._body_deadline)

    def on_body(self, body: bytes) -> None:
        if self.cycle is not None and not self.discarding and not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.discarding:
            return
        self._disarm()
        if self.cycle is not None and not self.transport.is_closing():
            super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        cycle.transport = OneWriteTransport(self.transport)
        cycle.scope["extensions"] = {CLIENT_GONE: cycle.transport.gone}
        super()._start_asgi_task(cycle, app)

    # -- deadlines ------------------------------------------------------------------

    def _body_done(self) -> bool:
        """True when the request has no body to wait for."""
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() == b"0"
            if name == b"transfer-encoding":
                return False
        return True

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _header_deadline(self) -> None:
        self.deadline = None
        if self.header_bytes == 0:
            self._close()  # never sent a byte: nothing to answer
            return
        self._refuse(408, "request_timeout",
                     f"The request headers did not arrive within "
                     f"{self.guards.header_timeout:g} s.")

    def _body_deadline(self) -> None:
        self.deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self._refuse(408, "request_timeout",
                         f"The request body did not arrive within "
                         f"{self.guards.body_timeout:g} s.")
        else:
            self._close()

    # -- answers --------------------------------------------------------------------

    def _refuse(self, status: int, code: str, message: str) -> None:
        if self.transport.is_closing() or self.discarding:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app (if running) sees a disconnect and sends nothing more.
            cycle.disconnected = True
            cycle.message_event.set()
        target = getattr(self, "url", b"")  # the request target (path and query) so far
        self.transport.write(error_response(status, code, message, target))
        self._linger()

    def _linger(self) -> None:
        """Half-close and discard what the client still sends for a moment, so the
        answer is read before the connection goes (closing with unread data sends a
        reset, which can destroy the answer in flight)."""
        if not self.transport.can_write_eof():
            self._close()
            return
        self.discarding = True
        self.transport.write_eof()
        self._arm(LINGER_SECONDS, self._close)

    def _close(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()
