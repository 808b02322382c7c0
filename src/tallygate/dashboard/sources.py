"""What the dashboard reads and changes: the ledger, the state store (limits and flags),
the key store and the alert log. Inside a gateway they are the gateway's own (`of_runtime`);
`tallygate dashboard --config FILE` opens them from the policy (`open_sources`), with no
gateway running."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tallygate.core.catalog import Catalog
from tallygate.errors import ConfigError

if TYPE_CHECKING:
    from tallygate.config import Policy
    from tallygate.keys.base import KeyStore
    from tallygate.ledger.base import LedgerStore
    from tallygate.observe.alert_log import AlertLog
    from tallygate.runtime import Runtime
    from tallygate.state.base import StateStore


@dataclass
class Sources:
    policy: Policy
    catalog: Catalog
    ledger: LedgerStore
    keys: KeyStore
    alerts: AlertLog
    store: StateStore | None  # None: the limits cannot be read from here (store_problem)
    store_problem: str | None = None
    flush: Callable[[], Awaitable[None]] | None = None  # commit rows still in a writer
    clock: Callable[[], float] = time.time
    _close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def static_flags(self) -> dict[str, bool]:
        p = self.policy
        return {name: p.flag(name) for name in {*p.features, *p.flags}}

    async def fresh(self) -> None:
        """Before a read: what the gateway recorded so far is in the ledger."""
        if self.flush is not None:
            await self.flush()

    async def close(self) -> None:
        for close in reversed(self._close):
            await close()
        self._close.clear()


async def of_runtime(rt: Runtime) -> Sources:
    """A gateway's own stores; the alert log is opened here (closed by `close`)."""
    from tallygate.observe.alert_log import open_alert_log

    alerts = await open_alert_log(rt.policy.storage.ledger)
    return Sources(rt.policy, rt.catalog, rt.ledger, rt.keys, alerts, rt.store,
                   flush=rt.writer.flush, _close=[alerts.close])


async def open_sources(policy: Policy) -> Sources:
    """Open the policy's ledger, key store, alert log and state store (shared mode: a
    gateway may be running on them). A memory:// state lives inside its gateway."""
    from tallygate.keys import open_keystore
    from tallygate.ledger import default_journal_dir, open_ledger, replay_orphans
    from tallygate.observe.alert_log import open_alert_log
    from tallygate.state import from_url

    storage = policy.storage
    ledger = await open_ledger(storage.ledger)
    closers: list[Callable[[], Awaitable[None]]] = [ledger.close]
    try:
        # Rows a dead process left in its journal first (as `tallygate report` does).
        await replay_orphans(ledger, storage.ledger_journal
                             or default_journal_dir(storage.ledger))
        keys = await open_keystore(storage.ledger)
        closers.append(keys.close)
        alerts = await open_alert_log(storage.ledger)
        closers.append(alerts.close)
    except BaseException:
        for close in reversed(closers):
            await close()
        raise
    store: StateStore | None = None
    problem = None
    if storage.state.startswith("memory://"):
        problem = ("the state store is memory://: limits and flags live inside the running "
                   "gateway; open its /dashboard instead")
    else:
        try:
            store = from_url(storage.state)  # never the owner: a gateway may be
        except ConfigError as exc:
            problem = exc.message
    if store is not None:
        closers.append(store.close)
    return Sources(policy, Catalog(policy.models), ledger, keys, alerts, store,
                   store_problem=problem, _close=closers)
