"""Minimal ASGI plumbing for the hot routes: read a capped body, send a response,
watch for a client disconnect. Kept raw (no framework objects) because the proxy's
own overhead is the product."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from tallygate.errors import InvalidRequest, RequestTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]
DRAIN_LIMIT = 256 * 1024 * 1024


class ClientGone(Exception):
    """The client disconnected before the request body was read."""


def header_map(scope: Scope) -> dict[str, str]:
    """Lower-cased request headers (last value wins), decoded as latin-1 like HTTP."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


# ASGI scope extension our server sets (gateway/guarded_http.py): a callable, True once
# the client's connection is closed (ASGI itself only tells a task waiting on receive()).
CLIENT_GONE = "tallygate.client_gone"


async def read_body(scope: Scope, receive: Receive, cap: int) -> bytes:
    """The whole request body, or RequestTooLarge as soon as it passes `cap` bytes."""
    declared = 0
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise InvalidRequest("Content-Length is not a number.") from None
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > cap:
            # Read the rest (discarding it) so the client sees the 413 instead of a
            # broken pipe; past DRAIN_LIMIT the connection is simply dropped.
            if max(size, declared) <= DRAIN_LIMIT:
                await _drain(receive, more)
            raise RequestTooLarge(f"Request body exceeds the limit of {cap} bytes.")
        if chunk:
            parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _drain(receive: Receive, more: bool) -> None:
    size = 0
    while more and size <= DRAIN_LIMIT:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        size += len(message.get("body", b""))
        more = message.get("more_body", False)


def encode_headers(headers: Iterable[tuple[str, str]]) -> RawHeaders:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def send_bytes(
    send: Send, status: int, body: bytes, headers: RawHeaders, content_type: bytes
) -> None:
    all_headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, body: bytes, headers: RawHeaders) -> None:
    await send_bytes(send, status, body, headers, b"application/json")


def watch_disconnect(receive: Receive) -> asyncio.Task[None]:
    """A task that finishes when the client disconnects (after the body was read)."""

    async def wait() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    return asyncio.ensure_future(wait())
