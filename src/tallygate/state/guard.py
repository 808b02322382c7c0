"""What happens when the shared store (Redis) cannot be reached.

`GuardedStore` wraps the shared store. When it raises StoreUnavailable (connection
refused, connect/socket timeout):

- `fail_closed`: reserve/usage/flags/claim raise StoreUnavailable (the gateway answers
  429 `store_unavailable`); nothing is admitted.
- `fail_open`: the call is admitted against a local MemoryStore that counts usage in
  this process only, each limit cut to this replica's share of it: at most
  `open_share` × limit (storage.fail_open_share, default 0.1), and no more than the
  room the shared store showed when this replica last read that limit. So during an
  outage R replicas admit at most R × open_share × limit beyond what the shared store
  held when it went away — the documented worst case (docs/architecture.md).

In both modes settle and release never raise for an outage: they are queued and
replayed, because the call happened and its usage must be counted.

extend (a streaming call growing its hold) during an outage:
- a reservation made locally (fail_open, during the outage) is extended locally (within
  this replica's share of each limit, as it was reserved);
- a shared-store reservation, `fail_closed`: raises StoreUnavailable, as reserve does:
  the caller ends the stream (nothing more is admitted without the shared count). An
  extension whose answer was lost may still have been applied: the hold is then larger
  than the caller thinks until it settles (over-held, never overspent);
- a shared-store reservation, `fail_open`: the growth is held locally under
  `<request id>#grow` (the lines of the shared reservation, the growth as amounts, each
  limit cut to this replica's share), so this replica's other calls see it and a full
  local share refuses it; the shared lease is not renewed meanwhile (a late settle is
  still charged). The local `#grow` hold is released when the call settles or releases;
  the actual usage reaches the shared store through the queued settle, like any other.

Reconciliation, whenever a call to the shared store succeeds and operations are queued
(during an outage it is tried at most once per `probe_interval`), in order of arrival —
whatever the interleaving: a call that began before a failure and succeeded after it
does not end the outage, and queued operations are drained on every success, so none is
left behind:
- every reservation made locally and settled: its actual usage is charged to the shared
  store, in the window buckets of the time it was reserved (replayed as a zero-amount
  reservation `<request id>#replay` at that time, then settled; replaying twice is a
  no-op because that id is then already settled);
- every settle/release of a shared-store reservation that failed: replayed as is
  (idempotent; a lease that expired meanwhile still gets its actual usage charged).
- every reservation whose call to the shared store failed: released there (a timeout
  may have come after the store applied it; releasing an unknown id is a no-op).
Local reservations still in flight are reconciled when they settle. Released local
reservations, local claims and local flag reads are not replayed. set_flag always goes
to the shared store (an admin change must not diverge between replicas).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from tallygate.errors import InvalidRequest, StoreUnavailable
from tallygate.state.base import StateStore
from tallygate.state.memory import MemoryStore
from tallygate.state.read_along import ReadAlong
from tallygate.types import Denial, Hold, LimitUsage, NotHeld, SettleResult, Window

T = TypeVar("T")
log = logging.getLogger("tallygate.state")
REPLAY_LEASE = 60.0
_SEEN_KEYS = 100_000  # limits whose last shared usage is remembered for fail_open


@dataclass(slots=True)
class _Pending:
    """One operation to replay into the shared store."""

    request_id: str
    now: float
    actual: dict[str, int] | None = None  # None = release
    holds: list[Hold] = field(default_factory=list)  # set = a local reservation's usage


class GuardedStore(ReadAlong):
    """StateStore that survives the shared store's outages in the configured mode."""

    def __init__(self, inner: StateStore, mode: Literal["fail_closed", "fail_open"],
                 local: StateStore | None = None, *, probe_interval: float = 1.0,
                 open_share: float = 0.1) -> None:
        if mode not in ("fail_closed", "fail_open"):
            raise InvalidRequest(f"mode must be fail_closed or fail_open, got {mode!r}")
        if not 0 < open_share <= 1:
            raise InvalidRequest(f"open_share must be in (0, 1], got {open_share!r}")
        self.open_share = open_share
        self._failures = 0  # bumped by every failure: a success older than it proves nothing
        self._seen: dict[str, int] = {}  # limit key → used + reserved, last read shared
        self.inner = inner
        self.mode = mode
        self.local: StateStore = local if local is not None else MemoryStore()
        self._probe_interval = probe_interval
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._local_holds: dict[str, tuple[list[Hold], float]] = {}
        # fail_open: the holds of shared reservations in flight, in case an extension
        # must be held locally during an outage; and those that were (`#grow` holds).
        self._shared_holds: dict[str, Sequence[Hold]] = {}
        self._grown: set[str] = set()
        self._pending: list[_Pending] = []
        self._drain_lock = asyncio.Lock()

    @property
    def degraded(self) -> bool:
        """True while the shared store is considered unreachable."""
        return self._down_since is not None

    @property
    def pending(self) -> int:
        """Operations waiting to be replayed into the shared store."""
        return len(self._pending)

    async def _shared(self, op: Callable[[], Awaitable[T]], *,
                      failed: Callable[[], None] | None = None) -> T:
        """Run op on the shared store; raise StoreUnavailable while it is down. `failed`
        runs when op itself was sent and failed (not when refused during an outage)."""
        clock = time.monotonic()
        if self._down_since is not None:
            if clock < self._next_probe:
                raise StoreUnavailable("state store unreachable (outage in progress)")
            self._next_probe = clock + self._probe_interval  # one prober at a time
            if self._pending and not await self.reconcile():
                raise StoreUnavailable("state store unreachable (outage in progress)")
        failures = self._failures
        try:
            result = await op()
        except StoreUnavailable:
            self._mark_down(clock)
            if failed is not None:
                failed()
            raise
        if self._down_since is not None and failures == self._failures:
            log.warning("state store reachable again after %.1f s",
                        time.monotonic() - self._down_since)
            self._down_since = None
        if self._pending and self._down_since is None:
            await self.reconcile()
        return result

    def _mark_down(self, clock: float) -> None:
        self._failures += 1
        if self._down_since is None:
            self._down_since = clock
            log.error("state store unreachable: %s mode", self.mode)
        self._next_probe = clock + self._probe_interval

    async def _fallback(self, op: Callable[[StateStore], Awaitable[T]]) -> T:
        try:
            return await self._shared(lambda: op(self.inner))
        except StoreUnavailable:
            if self.mode == "fail_closed":
                raise
        return await op(self.local)

    # -- reservations -------------------------------------------------------------
    async def reserve(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float
    ) -> Denial | None:
        try:
            denial = await self._shared(
                lambda: self.inner.reserve(request_id, holds, lease=lease, now=now),
                # A timeout may come after the store applied the reservation: give it
                # back when the store answers again, or it stays held until its lease.
                failed=lambda: self._pending.append(_Pending(request_id, now)))
        except StoreUnavailable:
            if self.mode == "fail_closed":
                raise
        else:
            if denial is None and self.mode == "fail_open":
                self._shared_holds[request_id] = holds
            return denial
        local = [replace(h, limit=self._local_limit(h)) for h in holds]
        denial = await self.local.reserve(request_id, local, lease=lease, now=now)
        if denial is None:
            self._local_holds[request_id] = (list(holds), now)
        return denial

    async def extend(
        self, request_id: str, more: Mapping[str, int], *, lease: float, now: float
    ) -> Denial | NotHeld | None:
        if request_id in self._local_holds:
            return await self.local.extend(request_id, more, lease=lease, now=now)
        try:
            return await self._shared(
                lambda: self.inner.extend(request_id, more, lease=lease, now=now))
        except StoreUnavailable:
            if self.mode == "fail_closed":
                raise
        holds = self._shared_holds.get(request_id)
        if holds is None:  # not a reservation this process holds in the shared store
            return NotHeld(request_id, "unknown")
        grow_id = f"{request_id}#grow"
        if request_id in self._grown:
            return await self.local.extend(grow_id, more, lease=lease, now=now)
        growth = [replace(h, amount=more.get(h.metric.value, 0), limit=self._local_limit(h))
                  for h in holds]
        denial = await self.local.reserve(grow_id, growth, lease=lease, now=now)
        if denial is None:
            self._grown.add(request_id)
        return denial

    async def _drop_growth(self, request_id: str, now: float) -> None:
        self._shared_holds.pop(request_id, None)
        if request_id in self._grown:
            self._grown.discard(request_id)
            await self.local.release(f"{request_id}#grow", now=now)

    def _local_limit(self, hold: Hold) -> int:
        """This replica's share of a limit during an outage (see the module docstring)."""
        share = math.ceil(hold.limit * self.open_share)
        seen = self._seen.get(hold.key)
        return share if seen is None else max(0, min(share, hold.limit - seen))

    async def settle(
        self, request_id: str, actual: Mapping[str, int], *, now: float
    ) -> SettleResult:
        local = self._local_holds.pop(request_id, None)
        if local is not None:
            result = await self.local.settle(request_id, actual, now=now)
            self._pending.append(_Pending(request_id, local[1], dict(actual), local[0]))
            if self._down_since is None:
                await self.reconcile()
            return result
        await self._drop_growth(request_id, now)
        try:
            return await self._shared(lambda: self.inner.settle(request_id, actual, now=now))
        except StoreUnavailable:
            self._pending.append(_Pending(request_id, now, dict(actual)))
            return SettleResult()  # charged at reconciliation

    async def release(self, request_id: str, *, now: float) -> None:
        if self._local_holds.pop(request_id, None) is not None:
            await self.local.release(request_id, now=now)
            return
        await self._drop_growth(request_id, now)
        try:
            await self._shared(lambda: self.inner.release(request_id, now=now))
        except StoreUnavailable:
            self._pending.append(_Pending(request_id, now))

    async def reconcile(self) -> bool:
        """Replay queued operations into the shared store (replays run before the call
        that found the store back, so its answer includes them). Returns False, keeping
        the rest queued, if the store is unreachable again."""
        done = 0
        async with self._drain_lock:
            while self._pending:
                try:
                    await self._replay(self._pending[0])
                except StoreUnavailable:
                    self._mark_down(time.monotonic())
                    return False
                self._pending.pop(0)
                done += 1
        if done:
            log.warning("reconciled %d operations into the state store", done)
        return True

    async def _replay(self, item: _Pending) -> None:
        if item.actual is None:
            await self.inner.release(item.request_id, now=item.now)
            return
        if not item.holds:
            await self.inner.settle(item.request_id, item.actual, now=item.now)
            return
        rid = f"{item.request_id}#replay"
        zero = [replace(hold, amount=0) for hold in item.holds]
        try:
            await self.inner.reserve(rid, zero, lease=REPLAY_LEASE, now=item.now)
        except InvalidRequest:
            return  # replayed and settled before
        await self.inner.settle(rid, item.actual, now=item.now)

    # -- reads, flags, claims ---------------------------------------------------------
    async def usage(
        self, key: str, *, limit: int, window: Window, rolling: bool = False, now: float
    ) -> LimitUsage:
        try:
            found = await self._shared(lambda: self.inner.usage(
                key, limit=limit, window=window, rolling=rolling, now=now))
        except StoreUnavailable:
            if self.mode == "fail_closed":
                raise
            return await self.local.usage(key, limit=limit, window=window, rolling=rolling,
                                          now=now)
        self._seen[key] = found.used + found.reserved
        if len(self._seen) > _SEEN_KEYS:  # bounded: forget the oldest half
            for old in list(self._seen)[: _SEEN_KEYS // 2]:
                del self._seen[old]
        return found

    async def get_flag(self, name: str) -> bool | None:
        return await self._fallback(lambda s: s.get_flag(name))

    async def set_flag(self, name: str, on: bool) -> None:
        await self._shared(lambda: self.inner.set_flag(name, on))

    async def clear_flag(self, name: str) -> bool:
        return await self._shared(lambda: self.inner.clear_flag(name))

    async def flags(self) -> dict[str, bool]:
        return await self._fallback(lambda s: s.flags())

    async def flags_version(self) -> int:
        return await self._fallback(lambda s: s.flags_version())

    async def claim(self, key: str, ttl: float, *, now: float) -> bool:
        return await self._fallback(lambda s: s.claim(key, ttl, now=now))

    async def close(self) -> None:
        try:
            await self.inner.close()
        finally:
            await self.local.close()
