"""The aiohttp transport (`server.upstream: aiohttp`): one pooled aiohttp session per
gateway process, behind the interface of `base.py`.

The lean transport (`lean.py`) is the default; this one is a config line away."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp

from tallygate.errors import UpstreamError
from tallygate.gateway.upstream.base import UpstreamResponse


class Upstream:
    def __init__(self, *, connect_timeout: float = 10.0, pool_size: int = 0) -> None:
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, ttl_dns_cache=300, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
            )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, total: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=total, connect=self._connect_timeout, sock_read=total
        )

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float | None
    ) -> UpstreamResponse:
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=self._timeout(timeout)
            ) as resp:
                data = await resp.read()
                return UpstreamResponse(resp.status, _lower(resp.headers), data)
        except TimeoutError as exc:
            raise UpstreamError("Upstream timed out.", status=504, timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Upstream unreachable: {exc}", status=502) from exc

    async def open_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float | None
    ) -> StreamHandle:
        try:
            ctx = self.session.post(
                url, data=body, headers=headers, timeout=self._timeout(timeout)
            )
            resp = await ctx.__aenter__()
        except TimeoutError as exc:
            raise UpstreamError("Upstream timed out.", status=504, timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Upstream unreachable: {exc}", status=502) from exc
        return StreamHandle(resp)


class StreamHandle:
    """An open upstream response whose body is read chunk by chunk as it arrives."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = _lower(resp.headers)

    async def read_all(self) -> bytes:
        try:
            return await self._resp.read()
        finally:
            self.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._resp.content.iter_any():
            yield chunk

    def close(self) -> None:
        """Close the upstream connection (also stops generation on a client disconnect)."""
        self._resp.close()


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


