"""What the gateway needs from an upstream HTTP client, whichever transport serves it
(the lean httptools client, `lean.py`, or aiohttp's, `aiohttp.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

# Response headers worth passing to the client (the rest are hop-by-hop or ours).
PASS_HEADERS = frozenset(
    {
        "x-request-id",
        "request-id",
        "openai-processing-ms",
        "openai-version",
        "openai-organization",
        "retry-after",
        "retry-after-ms",
        "anthropic-organization-id",
    }
)


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


class StreamBody(Protocol):
    """An upstream response read as it arrives (what both transports return)."""

    status: int
    headers: dict[str, str]

    async def read_all(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """What the gateway needs from an upstream HTTP client (aiohttp's or the lean one)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *,
                   timeout: float | None) -> UpstreamResponse: ...

    async def open_stream(self, url: str, body: bytes, headers: Mapping[str, str], *,
                          timeout: float | None) -> StreamBody: ...


def passthrough_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k in PASS_HEADERS]
