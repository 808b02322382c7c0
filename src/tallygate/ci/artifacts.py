"""The artifact cache of `tallygate gen`: one generated answer per cache key (plan.py),
HMAC-signed (cache/signed.py: a tampered, foreign or moved entry is a miss, then
regenerated and overwritten), in a local directory (works with `actions/cache`) or the
policy's cache backend (Redis shared by every runner, or SQLite)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson

from tallygate.cache.backends import backend_url, open_backend
from tallygate.cache.directory import DirectoryBackend
from tallygate.cache.signed import ResponseCache
from tallygate.config import Policy
from tallygate.types import Usage

DEFAULT_TTL = 30 * 86_400.0


@dataclass(frozen=True, slots=True)
class Artifact:
    content: str  # the model's answer, as it came
    model: str  # the model that answered
    usage: Usage  # what it cost when it was generated: what a hit saves


class ArtifactCache:
    def __init__(self, cache: ResponseCache, where: str) -> None:
        self._cache = cache
        self.where = where

    @property
    def tampered(self) -> int:
        """Entries refused by the signature check so far."""
        return self._cache.tampered

    async def get(self, key: str) -> Artifact | None:
        raw = await self._cache.get(key)
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            usage = data["usage"]
            return Artifact(str(data["content"]), str(data["model"]),
                            Usage(input_tokens=int(usage["input_tokens"]),
                                  output_tokens=int(usage["output_tokens"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # signed by us but not an artifact (another tool's entry): a miss

    async def put(self, key: str, artifact: Artifact) -> None:
        value = {"content": artifact.content, "model": artifact.model,
                 "usage": {"input_tokens": artifact.usage.input_tokens,
                           "output_tokens": artifact.usage.output_tokens}}
        await self._cache.put(key, orjson.dumps(value).decode())

    async def close(self) -> None:
        await self._cache.close()


def open_artifact_cache(where: str, policy: Policy, ttl: float = DEFAULT_TTL
                        ) -> tuple[ArtifactCache | None, str]:
    """(`--cache` opened, a note for the summary). `where`: `none`, `policy` (the
    policy's cache backend: cache.backend, else beside the state store), a backend URL
    (redis://…, sqlite:///…, file:///…) or a directory. Without `cache.hmac_key` there
    is no cache: unsigned entries could be forged by anyone who can write them."""
    if where == "none":
        return None, "off (--cache none)"
    secret = policy.cache.hmac_key.get_secret_value() if policy.cache.hmac_key else ""
    if not secret:
        return None, "off: set cache.hmac_key in the policy (e.g. ${TALLYGATE_CACHE_KEY})"
    if where == "policy":
        url = backend_url(policy.cache.backend, policy.storage.state)
        backend = open_backend(url)
        label = _without_password(url)
    elif "://" in where:
        backend = open_backend(where)
        label = _without_password(where)
    else:
        backend = DirectoryBackend(Path(where))
        label = where
    return ArtifactCache(ResponseCache(backend, secret.encode(), ttl=ttl), label), label


def _without_password(url: str) -> str:
    """A backend URL fit to print: no user or password."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
