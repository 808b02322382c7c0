"""Upstream transports behind one interface (`base.py`): the lean httptools keep-alive
client (`lean.py`, the default) and one pooled aiohttp session (`aiohttp.py`)."""

from tallygate.gateway.upstream.base import (
    PASS_HEADERS,
    StreamBody,
    Transport,
    UpstreamResponse,
    passthrough_headers,
)

__all__ = ["PASS_HEADERS", "StreamBody", "Transport", "UpstreamResponse", "passthrough_headers"]
