"""The exact-match response cache: canonical request key (key.py), HMAC-signed
expiring entries (signed.py) over memory/sqlite/redis (backends.py). Replaying a cached
answer as a stream is protocol knowledge: providers/replay.py."""

from __future__ import annotations

import logging

from tallygate.cache.backends import backend_url, open_backend
from tallygate.cache.key import canonical_request, request_key, turns_key
from tallygate.cache.signed import ResponseCache

__all__ = ["ResponseCache", "canonical_request", "open_cache", "request_key", "turns_key"]

log = logging.getLogger("tallygate.cache")


def open_cache(backend: str | None, *, state_url: str, hmac_key: str,
               ttl: float) -> ResponseCache | None:
    """The response cache on `backend` (None: beside the state store at `state_url`), or
    None (with a logged note) without an HMAC key: unsigned entries could be forged by
    anyone who can write the backend."""
    if not hmac_key:
        log.info("response cache disabled: set cache.hmac_key to enable it")
        return None
    return ResponseCache(open_backend(backend_url(backend, state_url)), hmac_key.encode(),
                         ttl=ttl)
