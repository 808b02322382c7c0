"""The state-store protocol: atomic all-or-nothing reservations on windowed limits.

Every backend (memory, sqlite, redis) implements `StateStore` and is proven by one
conformance suite (tests/conformance/test_state.py). Time is always passed in by the
caller (`now`, unix seconds) so windows are testable and replicas agree.

Lifetime limits (`Window.RUN`, a run's whole budget) are one bucket that never resets.
Every store drops such a counter once nobody has reserved, extended or settled on it for
`run_ttl` seconds (the store's constructor argument, `storage.run_ttl`, default 30 days):
Redis by key TTL, SQLite and owner mode by a sweep, memory by a sweep. Reads alone do not
keep a run alive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from tallygate.types import Denial, Hold, LimitUsage, NotHeld, SettleResult, Window

RUN_TTL = 30 * 86_400.0  # seconds an untouched lifetime counter is kept (storage.run_ttl)


@runtime_checkable
class StateStore(Protocol):
    """Shared limit state. All methods are coroutines; each is one atomic operation."""

    async def reserve(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float
    ) -> Denial | None:
        """Hold every amount or nothing. Returns None on success, else the first Denial.

        Expired leases on the touched keys are reclaimed first. A second call with the
        same request_id while the first is held is a no-op success (idempotent)."""
        ...

    async def extend(
        self, request_id: str, more: Mapping[str, int], *, lease: float, now: float
    ) -> Denial | NotHeld | None:
        """Grow a held reservation: every line of metric `m` ("tokens", "cost",
        "requests") holds `more[m]` more, all lines or none, only if each of those
        limits still has room (used + reserved + more <= limit, in the window at `now`;
        a calendar line whose window has ended since it was reserved no longer limits:
        its bucket is closed, and settle charges the call to it as always). On
        success the lease is renewed to `now + lease` and None is returned; else the
        first Denial (requested = that line's growth), nothing changed.

        A reservation that is not held answers NotHeld(request_id, state), state one of
        "unknown", "settled", "released", "expired" (lease ended at or before `now`,
        whether reclaimed yet or not): nothing changes and nothing is renewed. One
        atomic operation, one store trip; not idempotent (each call grows the hold).
        settle() afterwards replaces the whole grown hold by the actual usage."""
        ...

    async def settle(
        self, request_id: str, actual: Mapping[str, int], *, now: float
    ) -> SettleResult:
        """Replace the held amounts by the actual usage, per metric name
        ("tokens", "requests", "cost"), charged to the window bucket the hold was made
        in. Charges above what was held are still charged and reported as overrun.
        Settling twice, or after expiry/release, charges nothing more."""
        ...

    async def release(self, request_id: str, *, now: float) -> None:
        """Give every held amount back (idempotent)."""
        ...

    async def usage(
        self, key: str, *, limit: int, window: Window, rolling: bool = False, now: float
    ) -> LimitUsage:
        """Used and reserved for the current window of `key`, and when it resets."""
        ...

    async def reserve_and_read(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float,
        read: Sequence[Hold],
    ) -> tuple[Denial | None, list[LimitUsage]]:
        """reserve(), plus the usage of each `read` hold's limit just after it, in one
        trip where the backend can (the gateway's x-ratelimit-* headers). No usage is
        read when the reservation is denied. A failed read alone costs only the list."""
        ...

    async def finish_and_read(
        self, request_id: str, actual: Mapping[str, int] | None, *, now: float,
        read: Sequence[Hold],
    ) -> tuple[SettleResult, list[LimitUsage]]:
        """settle() (actual given) or release() (None), plus the usage of each `read`
        hold's limit just after it, like reserve_and_read()."""
        ...

    async def get_flag(self, name: str) -> bool | None:
        """A feature flag set at run time, or None when never set."""
        ...

    async def set_flag(self, name: str, on: bool) -> None: ...

    async def clear_flag(self, name: str) -> bool:
        """Forget a run-time flag so the policy's value applies again. True when one
        was set. Bumps flags_version like set_flag (replicas see the change)."""
        ...

    async def flags(self) -> dict[str, bool]:
        """Every flag set at run time."""
        ...

    async def flags_version(self) -> int:
        """A counter bumped by every set_flag: cheap to poll for change notification."""
        ...

    async def claim(self, key: str, ttl: float, *, now: float) -> bool:
        """True for exactly one caller per key until ttl passes (alerts fire once)."""
        ...

    async def close(self) -> None: ...
