"""The lean upstream transport against tiny loopback servers: keep-alive reuse, a stale
kept-alive socket retried fresh, malformed responses, timeouts, header injection, TLS."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable

import pytest

from tallygate.errors import UpstreamError
from tallygate.gateway.upstream.lean import LeanUpstream

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str, list[int]]:
    connections: list[int] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/x", connections


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


async def test_keep_alive_reuses_one_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            await _read_request(reader)
            writer.write(OK)
            await writer.drain()

    server, url, conns = await _serve(handler)
    up = LeanUpstream()
    for _ in range(3):
        resp = await up.post(url, b'{"a":1}', {"content-type": "application/json"}, timeout=5)
        assert (resp.status, resp.body) == (200, b"{}")
    assert len(conns) == 1
    await up.close()
    server.close()


async def test_stale_kept_alive_socket_is_retried_fresh() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()  # then close: the pooled socket goes stale

    server, url, conns = await _serve(handler)
    up = LeanUpstream()
    assert (await up.post(url, b"{}", {}, timeout=5)).status == 200
    await asyncio.sleep(0.05)
    assert (await up.post(url, b"{}", {}, timeout=5)).status == 200
    assert len(conns) == 2
    await up.close()
    server.close()


async def test_chunked_stream_and_malformed_response() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await _read_request(reader)
        if b"bad" in body:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"5\r\ndata:\r\n3\r\n ok\r\n0\r\n\r\n")
        await writer.drain()

    server, url, _ = await _serve(handler)
    up = LeanUpstream()
    stream = await up.open_stream(url, b"good", {}, timeout=5)
    assert stream.status == 200 and await stream.read_all() == b"data: ok"
    with pytest.raises(UpstreamError) as info:
        await up.post(url, b"bad", {}, timeout=5)
    assert info.value.upstream_status == 502
    await up.close()
    server.close()


async def test_timeout_and_header_injection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)  # never answers in time

    server, url, _ = await _serve(handler)
    up = LeanUpstream()
    with pytest.raises(UpstreamError) as info:
        await up.post(url, b"{}", {}, timeout=0.2)
    assert info.value.upstream_status == 504 and info.value.details.get("timeout")
    with pytest.raises(UpstreamError):
        await up.post(url, b"{}", {"x-evil": "a\r\nhost: other"}, timeout=1)
    await up.close()
    server.close()


async def test_tls_verified_keep_alive_and_stream() -> None:
    """https upstreams: the certificate is checked against the trust store and the host
    name; kept-alive TLS connections are reused; streams work over TLS."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    chunked = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            for reply in (OK, chunked):
                await _read_request(reader)
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    connections: list[int] = []
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://localhost:{server.sockets[0].getsockname()[1]}/v1/x"
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    up = LeanUpstream(ssl_context=client_ctx)
    resp = await up.post(url, b"{}", {"content-type": "application/json"}, timeout=5)
    assert (resp.status, resp.body) == (200, b"{}")
    stream = await up.open_stream(url, b"{}", {}, timeout=5)
    assert [c async for c in stream.chunks()] in ([b"hello", b" world"], [b"hello world"])
    assert len(connections) == 1  # the TLS connection was kept alive and reused
    await up.close()
    untrusted = LeanUpstream()  # the system trust store does not know this CA
    with pytest.raises(UpstreamError) as caught:
        await untrusted.post(url, b"{}", {}, timeout=5)
    assert caught.value.status == 502 and "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    await untrusted.close()
    server.close()


async def test_a_response_cut_short_leaves_no_cycle_for_the_collector() -> None:
    """A connection closed mid-response (a dropped stream, an upstream that died) is
    freed when its last reference goes, not by a garbage collection: each cut-short
    exchange left ~10 objects in a reference cycle, and under a load with many drops the
    collections they caused held the event loop for up to 11 ms."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"half")
        await writer.drain()  # then the connection closes, 94 bytes short

    server, url, _ = await _serve(handler)
    up = LeanUpstream()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            with pytest.raises(UpstreamError):
                await up.post(url, b"{}", {"content-type": "application/json"}, timeout=5)
        await asyncio.sleep(0.05)  # the transports' connection_lost callbacks
        gc.collect()
        found = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        await up.close()
        server.close()
    assert "_Exchange" not in found and "HttpResponseParser" not in found, found
