"""The composition root: the long-lived objects one process needs, opened from the
policy and closed once — the state store, the ledger writer, the key store, the response
cache, the catalog and the engine built on them. The gateway opens one in its lifespan;
the library opens one per Governor. Nothing is wired into the engine afterwards."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tallygate.cache import ResponseCache, open_cache
from tallygate.config import Policy
from tallygate.core import bpe
from tallygate.core.catalog import Catalog
from tallygate.engine import Engine, Recorder, RetrySettings
from tallygate.keys import CachedKeyStore, KeyStore, open_keystore
from tallygate.ledger import LedgerStore, LedgerWriter, default_journal_dir, open_ledger
from tallygate.state import open_state
from tallygate.state.base import StateStore
from tallygate.types import CallRecord

log = logging.getLogger("tallygate.runtime")


class FanOut:
    """Hands every finished call to several recorders (ledger, metrics …) in order."""

    def __init__(self, *recorders: Recorder) -> None:
        self.recorders: list[Recorder] = list(recorders)

    def record(self, row: CallRecord) -> None:
        for recorder in self.recorders:
            try:
                recorder.record(row)
            except Exception:  # one broken recorder must not cost the others the row
                log.exception("call %s: a recorder (%s) failed", row.request_id,
                              type(recorder).__name__)


async def open_policy_state(policy: Policy, *, sole_process: bool = False) -> StateStore:
    """The configured state store; a shared (Redis) one is guarded by the fail mode.
    `sole_process`: nothing else will use a SQLite state file (a one-worker `serve`), so
    `state_mode: auto` may own it."""
    storage = policy.storage
    if storage.state.startswith("sqlite:") and not storage.state.endswith(":memory:"):
        owner = storage.state_mode == "owner" or (storage.state_mode == "auto"
                                                  and sole_process)
        return await open_state(storage.state, owner=owner, run_ttl=storage.run_ttl)
    store = await open_state(policy.storage.state, run_ttl=storage.run_ttl)
    if policy.storage.state.startswith(("redis://", "rediss://")):
        from tallygate.state.guard import GuardedStore
        from tallygate.state.memory import MemoryStore

        return GuardedStore(store, mode=policy.storage.fail_mode,
                            local=MemoryStore(run_ttl=storage.run_ttl),
                            open_share=float(policy.storage.fail_open_share))
    return store


async def open_response_cache(policy: Policy) -> ResponseCache | None:
    secret = policy.cache.hmac_key.get_secret_value() if policy.cache.hmac_key else ""
    return await asyncio.to_thread(  # a SQLite backend opens its file
        open_cache, policy.cache.backend, state_url=policy.storage.state, hmac_key=secret,
        ttl=policy.cache.ttl)


@dataclass
class Runtime:
    policy: Policy
    catalog: Catalog
    store: StateStore
    ledger: LedgerStore
    writer: LedgerWriter
    keys: KeyStore
    engine: Engine
    cache: ResponseCache | None = None
    recorders: FanOut = field(default_factory=FanOut)

    @classmethod
    async def open(
        cls, policy: Policy, *, clock: Callable[[], float] = time.time,
        sole_process: bool = False, retry: RetrySettings | None = None,
    ) -> Runtime:
        catalog = Catalog(policy.models)
        # Build the tokenizers now (about a second, in a thread), not on the first request.
        await asyncio.to_thread(bpe.warm)
        store = await open_policy_state(policy, sole_process=sole_process)
        ledger = await open_ledger(policy.storage.ledger)
        journal = policy.storage.ledger_journal or default_journal_dir(policy.storage.ledger)
        writer = LedgerWriter(
            ledger,
            journal_dir=journal,
            fsync=policy.storage.ledger_fsync,
            log_content=policy.log_content,
        )
        await writer.start()
        keys = CachedKeyStore(await open_keystore(policy.storage.ledger))
        cache = await open_response_cache(policy)
        recorders = FanOut(writer)
        engine = Engine(policy, catalog, store, recorders, clock=clock,
                        lease=policy.storage.lease_seconds, cache=cache, retry=retry)
        return cls(policy, catalog, store, ledger, writer, keys, engine, cache, recorders)

    async def close(self) -> None:
        """Close the calls still open (their relayed tokens settled and recorded), then
        flush the ledger and close every store."""
        await self.engine.close_open_calls()
        if self.cache is not None:
            await self.cache.close()
        await self.writer.close()
        await self.ledger.close()
        await self.keys.close()
        await self.store.close()
