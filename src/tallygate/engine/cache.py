"""The exact-match response cache as the engine uses it: whether a call opts in (its
feature's `cache`, or the caller's explicit on/off), the lookup after the call is
prepared (flags, routing and allow-list already decided, nothing reserved), and storing
a fresh answer. A hit costs no tokens and is recorded with the tokens it saved."""

from __future__ import annotations

from tallygate.cache import ResponseCache, request_key
from tallygate.config import Policy
from tallygate.engine.call import Call, CallContext
from tallygate.providers.replay import can_replay


class CallCache:
    def __init__(self, policy: Policy, cache: ResponseCache | None) -> None:
        self.policy = policy
        self.cache = cache

    def wanted(self, ctx: CallContext, asked: bool | None) -> bool:
        """`asked`: the caller's explicit choice (X-Tallygate-Cache), None for the
        feature's setting."""
        if self.cache is None or ctx.route == "embeddings":
            return False
        if ctx.stream and not can_replay(ctx.protocol, ctx.route):
            return False
        return asked if asked is not None else self.policy.feature(ctx.feature).cache

    async def lookup(self, call: Call) -> tuple[str, str | None]:
        """(key, the cached answer body or None)."""
        assert self.cache is not None
        ctx = call.ctx
        key = request_key(ctx.protocol, ctx.route, call.model.name, call.body, call.feature)
        return key, await self.cache.get(key)

    async def store(self, call: Call, key: str, raw: bytes) -> None:
        assert self.cache is not None
        ttl = self.policy.feature(call.ctx.feature).cache_ttl or self.policy.cache.ttl
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return
        await self.cache.put(key, text, ttl)
