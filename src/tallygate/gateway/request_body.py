"""A Starlette request's body read under a size cap, for the admin API and the dashboard.

The declared Content-Length is checked first and the stream is counted as it arrives,
so neither a lying header nor a chunked body can make the gateway hold more than `cap`."""

from __future__ import annotations

from starlette.requests import Request

from tallygate.errors import RequestTooLarge


async def read_capped(request: Request, cap: int, what: str = "Request body") -> bytes:
    """The whole body; RequestTooLarge ("<what> exceeds <cap> bytes.") past `cap`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise RequestTooLarge(f"{what} exceeds {cap} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise RequestTooLarge(f"{what} exceeds {cap} bytes.")
    return bytes(body)
