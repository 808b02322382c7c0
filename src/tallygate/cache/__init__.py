"""The exact-match response cache: canonical request key (key.py), HMAC-signed
expiring entries (signed.py) over memory/sqlite/redis (backends.py), and the SSE replay
of a cached answer (replay.py)."""

from __future__ import annotations

import logging

from tallygate.cache.backends import backend_url, open_backend
from tallygate.cache.key import canonical_request, request_key, turns_key
from tallygate.cache.signed import ResponseCache
from tallygate.config import Policy

__all__ = ["ResponseCache", "canonical_request", "open_cache", "request_key", "turns_key"]

log = logging.getLogger("tallygate.cache")


def open_cache(policy: Policy) -> ResponseCache | None:
    """The policy's cache, or None (with a logged note) when no `cache.hmac_key` is set:
    unsigned entries could be forged by anyone who can write the backend."""
    secret = policy.cache.hmac_key.get_secret_value() if policy.cache.hmac_key else ""
    if not secret:
        log.info("response cache disabled: set cache.hmac_key to enable it")
        return None
    url = backend_url(policy.cache.backend, policy.storage.state)
    return ResponseCache(open_backend(url), secret.encode(), ttl=policy.cache.ttl)
