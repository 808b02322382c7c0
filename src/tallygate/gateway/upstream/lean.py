"""A lean upstream transport: HTTP/1.1 keep-alive connections on asyncio protocols,
responses parsed by httptools (the parser uvicorn uses), behind the interface of
`base.py`. The default (`server.upstream: lean`; `aiohttp` selects `aiohttp.py`):
about half of aiohttp's per-request cost (bench/RESULTS.md). POST only (all the gateway
sends), no redirects, no proxies."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

from tallygate.errors import UpstreamError
from tallygate.gateway.upstream.base import UpstreamResponse

PAUSE_AT = 1 << 20  # buffered stream bytes before the socket stops being read
MAX_IDLE = 64  # idle connections kept per upstream host
CACHED = 256  # parsed URLs and request heads kept (then the caches start over)


class _Closed:
    """The parser of a closed connection: nothing more is fed to it."""

    def feed_data(self, data: bytes) -> None:
        raise httptools.HttpParserError("data after the connection closed")

    def get_status_code(self) -> int:
        return 0

    def should_keep_alive(self) -> bool:
        return False


_CLOSED = _Closed()


class _Exchange(asyncio.Protocol):
    """One connection; one request/response at a time (HTTP/1.1 keep-alive)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.loop = loop
        self._reset()

    def _reset(self) -> None:
        loop = self.loop
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.received = False  # any response byte yet (a reused socket may be stale)
        self.head: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.waiter: asyncio.Future[None] | None = None  # a stream reader waiting for data
        self.paused = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed upstream response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done.done():
            self._fail(exc or ConnectionResetError("upstream closed the connection"))
        # The parser holds this protocol (its callbacks): a cycle, left to the garbage
        # collector once per connection cut short (a dropped stream) otherwise.
        self.parser = _CLOSED

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_AT and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)
        self._wake()

    # -- helpers
    def _fail(self, exc: BaseException) -> None:
        for fut in (self.head, self.done):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: the reader may already be gone
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return not self.closed and self.done.done() and self.done.exception() is None


class LeanUpstream:
    def __init__(self, *, connect_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int, bool], list[_Exchange]] = {}
        # https: the system's trust store (SSL_CERT_FILE / SSL_CERT_DIR are honoured),
        # hostname checked; or a context of your own (a private CA).
        self._ssl: ssl.SSLContext | None = ssl_context
        # Parsed request targets and request heads, by URL and header set (a gateway
        # sends the same few again and again): parsing and checking them was a tenth of
        # the client's cost per request.
        self._targets: dict[str, tuple[tuple[str, int, bool], str, str]] = {}
        self._heads: dict[tuple[str, str, tuple[tuple[str, str], ...]], bytes] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()

    # -- connections
    async def _connect(self, host: str, port: int, tls: bool) -> _Exchange:
        loop = asyncio.get_running_loop()
        if tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Exchange(loop), host, port,
                                   ssl=self._ssl if tls else None),
            self._connect_timeout,
        )
        return conn

    def _reuse(self, key: tuple[str, int, bool]) -> _Exchange | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn._reset()
                return conn
        return None

    def _release(self, key: tuple[str, int, bool], conn: _Exchange) -> None:
        if conn.reusable and not conn.chunks:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        if conn.transport is not None:
            conn.transport.close()

    async def _exchange(self, url: str, body: bytes, headers: Mapping[str, str]
                        ) -> tuple[_Exchange, tuple[str, int, bool]]:
        """Send the request; return once the response headers arrived. The caller
        bounds the wait (asyncio.timeout: one timer, no extra task, unlike wait_for);
        the protocol never sets a future that is already done, so no shield either."""
        key, target, netloc = self._target(url)
        head = self._head(target, netloc, headers) + b"content-length: %d\r\n\r\n" % len(body)
        for fresh in (False, True):  # a kept-alive socket may have been closed meanwhile
            conn = None if fresh else self._reuse(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(*key)
            assert conn.transport is not None
            conn.transport.write(head + body)
            try:
                await conn.head
                return conn, key
            except (ConnectionError, OSError):
                if reused and not conn.received:
                    continue  # stale socket, nothing was processed: once more, fresh
                conn = None  # (the traceback keeps this frame: no cycle through conn)
                raise
            except BaseException:
                if conn.transport is not None:
                    conn.transport.close()
                conn = None
                raise
        raise ConnectionError("unreachable")  # pragma: no cover - loop returns or raises

    def _target(self, url: str) -> tuple[tuple[str, int, bool], str, str]:
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            key = (parts.hostname or "localhost", parts.port or (443 if tls else 80), tls)
            path = parts.path or "/"
            target = f"{path}?{parts.query}" if parts.query else path
            if len(self._targets) >= CACHED:
                self._targets.clear()
            found = self._targets[url] = (key, target, parts.netloc)
        return found

    def _head(self, target: str, netloc: str, headers: Mapping[str, str]) -> bytes:
        """The request head up to (not including) its content-length line."""
        cache_key = (target, netloc, tuple(headers.items()))
        head = self._heads.get(cache_key)
        if head is None:
            head = _request_head(target, netloc, headers)
            if len(self._heads) >= CACHED:
                self._heads.clear()
            self._heads[cache_key] = head
        return head

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *,
                   timeout: float | None) -> UpstreamResponse:
        conn: _Exchange | None = None
        try:
            async with asyncio.timeout(timeout):
                conn, key = await self._exchange(url, body, headers)
                await conn.done
        except BaseException as exc:
            if conn is not None and conn.transport is not None:
                conn.transport.close()  # a response cut short: never reused
            # The exception sits in conn's future and its traceback holds this frame:
            # let go of conn, or the three make a cycle only a collection frees.
            conn = None
            if isinstance(exc, TimeoutError):
                raise UpstreamError("Upstream timed out.", status=504, timeout=True) from exc
            if isinstance(exc, ConnectionError | OSError):
                raise UpstreamError(f"Upstream unreachable: {exc}", status=502) from exc
            raise
        data = conn.take()
        self._release(key, conn)
        return UpstreamResponse(conn.status, dict(conn.headers), data)

    async def open_stream(self, url: str, body: bytes, headers: Mapping[str, str], *,
                          timeout: float | None) -> LeanStream:
        try:
            async with asyncio.timeout(timeout):
                conn, key = await self._exchange(url, body, headers)
        except TimeoutError as exc:
            raise UpstreamError("Upstream timed out.", status=504, timeout=True) from exc
        except (ConnectionError, OSError) as exc:
            raise UpstreamError(f"Upstream unreachable: {exc}", status=502) from exc
        return LeanStream(self, conn, key, timeout)


class LeanStream:
    """An upstream response whose body is read chunk by chunk as it arrives."""

    def __init__(self, owner: LeanUpstream, conn: _Exchange, key: tuple[str, int, bool],
                 timeout: float | None) -> None:
        self._owner, self._conn, self._key, self._timeout = owner, conn, key, timeout
        self.status = conn.status
        self.headers = dict(conn.headers)
        self._finished = False

    async def read_all(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.done.done():
                conn.done.result()  # raises if the response broke off
                self._finished = True
                self._owner._release(self._key, conn)
                return
            conn.waiter = conn.loop.create_future()
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.waiter
            except TimeoutError as exc:
                self.close()
                raise UpstreamError("Upstream stream timed out.", status=504,
                                    timeout=True) from exc

    def close(self) -> None:
        """Drop the connection unless the response was read to its end."""
        if not self._finished and self._conn.transport is not None:
            with contextlib.suppress(Exception):
                self._conn.transport.close()


def _request_head(target: str, netloc: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"POST {target} HTTP/1.1", f"host: {netloc}"]
    for name, value in headers.items():
        if name.lower() in ("host", "content-length", "connection"):
            continue
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise UpstreamError(f"header {name!r} holds a line break", status=400)
        lines.append(f"{name}: {value}")
    try:
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")
    except UnicodeEncodeError as exc:
        raise UpstreamError(f"upstream header not encodable: {exc}", status=400) from exc
