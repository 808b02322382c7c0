"""The bare forwarding floor: uvicorn (uvloop + httptools) + a raw ASGI app that
forwards every POST to the upstream with one pooled aiohttp session and relays the
response (streamed chunk by chunk when the upstream streams). No parsing, no auth,
no accounting: whatever the gateway adds on top of this is its overhead.

    python bench/floor.py --upstream http://127.0.0.1:PORT --port 0
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn


def create_floor_app(upstream: str) -> Any:
    state: dict[str, aiohttp.ClientSession] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["s"] = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await state["s"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {"content-type": "application/json"}
        for k, v in scope["headers"]:
            if k in (b"authorization", b"x-api-key", b"anthropic-version"):
                headers[k.decode()] = v.decode()
        async with state["s"].post(upstream + scope["path"], data=body, headers=headers) as r:
            out = [(b"content-type", r.headers.get("content-type", "").encode())]
            await send({"type": "http.response.start", "status": r.status, "headers": out})
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    uvicorn.run(
        create_floor_app(args.upstream.rstrip("/")),
        host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
        log_level="warning", access_log=False, lifespan="on",
    )


if __name__ == "__main__":
    main()
