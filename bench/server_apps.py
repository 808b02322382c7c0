"""Module-level ASGI apps for the servers bench/server.py compares (granian and hypercorn
load `module:attribute`): the gateway as `tallygate serve` builds it from
TALLYGATE_CONFIG, and a bare app answering a small JSON body (the servers' own cost)."""

from __future__ import annotations

import os
from typing import Any

HELLO = b'{"object":"hello","ok":true}'


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(HELLO)).encode())]})
    await send({"type": "http.response.body", "body": HELLO})


def _gateway() -> Any:
    from tallygate.cli.serve import app_from_env

    return app_from_env()


gateway = _gateway() if os.environ.get("TALLYGATE_CONFIG") else None


class RSGIApp:
    """An ASGI app served over granian's RSGI: the request body read in one call, the
    answer handed over in one `response_bytes` (or streamed through `response_stream`).
    Only what the gateway's routes use; for the comparison in bench/stack.py."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi
        self._life: Any = None

    def __rsgi_init__(self, loop: Any) -> None:
        import asyncio

        inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        started = loop.create_future()

        async def send(message: dict[str, Any]) -> None:
            if not started.done():
                started.set_result(message["type"])

        async def startup() -> None:
            await inbox.put({"type": "lifespan.startup"})
            self._life = (inbox, loop.create_task(self.asgi({"type": "lifespan"},
                                                             inbox.get, send)))
            await started

        loop.run_until_complete(startup())

    def __rsgi_del__(self, loop: Any) -> None:
        inbox, task = self._life
        inbox.put_nowait({"type": "lifespan.shutdown"})
        loop.run_until_complete(task)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        body = await protocol()
        host, _, port = scope.client.rpartition(":")
        asgi_scope = {
            "type": "http", "http_version": scope.http_version, "method": scope.method,
            "scheme": scope.scheme, "path": scope.path, "raw_path": scope.path.encode(),
            "query_string": scope.query_string.encode(), "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1"))
                        for k, v in scope.headers.items()],
            "client": (host, int(port or 0)), "server": ("127.0.0.1", 0)}
        sent = False
        start: dict[str, Any] = {}
        stream: Any = None

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await protocol.client_disconnect()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal stream
            if message["type"] == "http.response.start":
                start.update(message)
                return
            headers = [(k.decode("latin-1"), v.decode("latin-1"))
                       for k, v in start.get("headers", ())]
            chunk = message.get("body", b"")
            if stream is None and not message.get("more_body", False):
                protocol.response_bytes(start["status"], headers, chunk)
                return
            if stream is None:
                stream = protocol.response_stream(start["status"], headers)
            if chunk:
                await stream.send_bytes(chunk)

        await self.asgi(asgi_scope, receive, send)


gateway_rsgi = RSGIApp(gateway) if gateway is not None else None


async def hello_rsgi(scope: Any, protocol: Any) -> None:
    """The hello app in RSGI itself (granian's own cost, no shim)."""
    await protocol()
    protocol.response_bytes(200, [("content-type", "application/json")], HELLO)
