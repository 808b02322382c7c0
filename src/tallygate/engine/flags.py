"""Feature flags as the engine sees them: the policy's static `flags`, overridden by
run-time flags in the state store. The store is polled through `flags_version()` at
most every `refresh` seconds, so a flag set on any replica applies everywhere within
a second and the request path costs no store round trip in between.

While calls keep coming, a due poll runs beside the call that found it due (that call,
and those after it until the poll returns, see the flags as they were): a store that
answers slowly — a thread waiting for the GIL on a busy process, a distant Redis — then
delays a flag change by as much, never a request. The first read, and the first call
after a quiet spell (no poll for two intervals), wait for the poll: a flag changed
during the lull applies to that very call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from tallygate.state.base import StateStore

log = logging.getLogger("tallygate.engine")


class FlagView:
    def __init__(
        self,
        store: StateStore,
        static: Mapping[str, bool],
        *,
        clock: Callable[[], float],
        refresh: float = 0.5,
    ) -> None:
        self._store = store
        self._static = dict(static)
        self._clock = clock
        self._refresh = refresh
        self._runtime: dict[str, bool] = {}
        self._version = -1
        self._checked_at = float("-inf")
        self._polling: asyncio.Task[None] | None = None

    def reload(self, static: Mapping[str, bool]) -> None:
        """A new policy's flags (run-time flags in the store still win over them)."""
        self._static = dict(static)

    async def enabled(self, feature: str) -> bool:
        now = self._clock()
        if now - self._checked_at >= self._refresh:
            quiet = now - self._checked_at >= 2 * self._refresh
            self._checked_at = now
            if self._version < 0 or quiet:  # nothing read yet, or not for a while
                if self._polling is not None:
                    await asyncio.shield(self._polling)
                else:
                    await self._poll()
            elif self._polling is None:
                self._polling = asyncio.ensure_future(self._poll())
                self._polling.add_done_callback(self._polled)
        if feature in self._runtime:
            return self._runtime[feature]
        return self._static.get(feature, True)

    async def _poll(self) -> None:
        version = await self._store.flags_version()
        if version != self._version:
            self._runtime = await self._store.flags()
            self._version = version

    def _polled(self, task: asyncio.Task[None]) -> None:
        self._polling = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("feature flags not refreshed (the previous ones stay): %s",
                        task.exception())

    def snapshot(self) -> dict[str, bool]:
        merged = dict(self._static)
        merged.update(self._runtime)
        return merged
