"""Hot reload of the policy: SIGHUP, `POST /admin/reload` or `tallygate reload --url`.

The file is read and validated in full (every name checked, as at start-up); a file that
does not load keeps the running policy, and the reason is logged (and answered, for the
API). A valid one is swapped in at once: calls already in flight finish under the policy
they started with (the engine keeps it on each call), limits keep their counters (they
live in the state store, keyed by scope). `storage:` and `server:` cannot change under a
running process: such a file is refused with "restart to apply".

Replicas: each reload flips a reserved flag in the shared state store; every gateway on
that store polls it (`POLL_SECONDS`) and reloads its own file when it flips, so one
`POST /admin/reload` reaches every replica within a few seconds (give them the same
file, as with any change)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from tallygate.config import DEFAULT_PATH, Policy, load_policy
from tallygate.errors import ConfigError, TallygateError
from tallygate.reports.flags import RESERVED
from tallygate.state.base import StateStore

log = logging.getLogger("tallygate.gateway")

POLICY_FLAG = RESERVED + "policy-reloaded"  # no feature has a colon: never a feature's flag
POLL_SECONDS = 1.0
_FIXED = ("storage", "server")
_UNREAD = object()  # the flag not read yet (None is "never set")


class PolicyReloader:
    def __init__(self, source: str | None, current: Callable[[], Policy],
                 swap: Callable[[Policy], None], store: StateStore) -> None:
        self.source = source
        self._current = current
        self._swap = swap
        self._store = store
        self._seen: bool | object | None = _UNREAD
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def reload(self, *, announce: bool = True) -> Policy:
        """Load, check and swap in the policy file; ConfigError (the running policy kept)
        when it cannot. `announce`: tell the other replicas."""
        async with self._lock:
            if self.source is None:
                raise ConfigError("this gateway was not started from a policy file: nothing "
                                  "to reload (serve --config FILE)")
            new = await asyncio.to_thread(load_policy, self.source)
            old = self._current()
            changed = [name for name in _FIXED if getattr(new, name) != getattr(old, name)]
            if changed:
                raise ConfigError(f"{self.source}: {' and '.join(changed)} changed: restart "
                                  "to apply (the running policy is kept)")
            self._swap(new)
            log.info("policy reloaded from %s", self.source)
            if announce:
                await self._announce()
            return new

    async def reload_logged(self) -> None:
        """SIGHUP: reload, or log why not (the running policy stays)."""
        try:
            await self.reload()
        except TallygateError as exc:
            log.error("policy not reloaded: %s", exc.message)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _announce(self) -> None:
        try:
            flipped = not bool(await self._store.get_flag(POLICY_FLAG))
            await self._store.set_flag(POLICY_FLAG, flipped)
            self._seen = flipped
        except TallygateError as exc:  # a store outage: the other replicas miss this one
            log.warning("policy reload not announced to other replicas: %s", exc.message)

    async def _watch(self) -> None:
        while True:
            try:
                seen = await self._store.get_flag(POLICY_FLAG)
                if self._seen is _UNREAD:
                    self._seen = seen
                elif seen != self._seen:
                    self._seen = seen
                    try:
                        await self.reload(announce=False)
                    except TallygateError as exc:
                        log.error("policy not reloaded (asked by another replica): %s",
                                  exc.message)
            except TallygateError:  # the store is down: try again next time
                pass
            await asyncio.sleep(POLL_SECONDS)


def policy_source() -> str | None:
    """The policy file a `serve` process loaded (cli/serve.py passes it on in
    TALLYGATE_CONFIG; without one, ./tallygate.yaml when it exists)."""
    named = os.environ.get("TALLYGATE_CONFIG")
    if named:
        return named
    return DEFAULT_PATH if os.path.isfile(DEFAULT_PATH) else None
