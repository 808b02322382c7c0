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
