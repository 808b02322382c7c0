"""Feature flags as the engine sees them: the policy's static `flags`, overridden by
run-time flags in the state store. The store is polled through `flags_version()` at
most every `refresh` seconds, so a flag set on any replica applies everywhere within
a second and the request path costs no store round trip in between."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tallygate.state.base import StateStore


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

    def reload(self, static: Mapping[str, bool]) -> None:
        """A new policy's flags (run-time flags in the store still win over them)."""
        self._static = dict(static)

    async def enabled(self, feature: str) -> bool:
        now = self._clock()
        if now - self._checked_at >= self._refresh:
            self._checked_at = now
            version = await self._store.flags_version()
            if version != self._version:
                self._runtime = await self._store.flags()
                self._version = version
        if feature in self._runtime:
            return self._runtime[feature]
        return self._static.get(feature, True)

    def snapshot(self) -> dict[str, bool]:
        merged = dict(self._static)
        merged.update(self._runtime)
        return merged
