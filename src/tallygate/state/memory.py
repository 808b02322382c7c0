"""In-process state store: one asyncio process, no I/O.

Every method runs to completion without awaiting, so each operation is atomic on the
event loop. Per limit (a "counter") we keep window cells {window id: [used, reserved]}
and the leases still holding an amount on it; expired leases are reclaimed by whoever
touches the counter next, and only scanned when the earliest known lease has passed.

Lifetime counters (`Window.RUN`) also remember when they were last written; one older
than `run_ttl` that holds nothing counts as empty when met, and the oldest-written ones
are dropped as each reservation passes (an ordered dict: O(1) when none is stale)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from tallygate.core.windows import LiveRanges, counter_name, room_returns_at
from tallygate.errors import InvalidRequest
from tallygate.state.base import RUN_TTL
from tallygate.state.checks import (
    check_actual,
    check_extend,
    check_flag,
    check_flag_name,
    check_holds,
    check_request,
    check_time,
    check_usage_args,
)
from tallygate.types import Denial, Hold, LimitUsage, NotHeld, SettleResult, Window

HELD, SETTLED, RELEASED = "held", "settled", "released"
SWEEP_EVERY = 65_536  # operations between sweeps of forgotten reservations
RETENTION = 86_400.0  # seconds a finished reservation is remembered (idempotent settle)


class _Counter:
    __slots__ = ("cells", "leases", "next_expiry", "written")

    def __init__(self) -> None:
        self.cells: dict[int, list[int]] = {}  # window id -> [used, reserved]
        self.leases: dict[str, float] = {}  # request id -> lease expiry
        self.next_expiry = math.inf
        self.written = -math.inf  # last reserve/extend/settle (lifetime counters only)

    def totals(self, oldest: int, current: int) -> tuple[int, int, int | None]:
        """used, reserved and the oldest non-empty window id in [oldest, current];
        cells older than the window are dropped."""
        used = reserved = 0
        first: int | None = None
        stale = []
        for wid, cell in self.cells.items():
            if wid < oldest:
                stale.append(wid)
            elif wid <= current:
                used += cell[0]
                reserved += cell[1]
                if (cell[0] or cell[1]) and (first is None or wid < first):
                    first = wid
        for wid in stale:
            del self.cells[wid]
        return used, reserved, first

    def cell(self, wid: int) -> list[int]:
        found = self.cells.get(wid)
        if found is None:
            found = self.cells[wid] = [0, 0]
        return found


class _Line:
    __slots__ = ("amount", "counter", "hold", "key", "live", "metric", "wid")

    def __init__(self, hold: Hold, counter: _Counter, wid: int) -> None:
        self.key = hold.key
        self.amount = hold.amount
        self.metric: str = hold.metric  # a StrEnum: hashes and compares as its value
        self.hold = hold  # its limit and window, for extend()
        self.counter = counter
        self.wid = wid
        self.live = True  # the amount still counts as reserved


class _Reservation:
    __slots__ = ("expires", "lines", "state", "touched")

    def __init__(self, lines: list[_Line], expires: float) -> None:
        self.lines = lines
        self.expires = expires
        self.state = HELD
        self.touched = expires


class MemoryStore:
    """StateStore for one process (tests, the library, single-worker gateways)."""

    def __init__(self, *, retention: float = RETENTION, run_ttl: float = RUN_TTL) -> None:
        check_time("run_ttl", run_ttl)
        self._counters: dict[tuple[str, Window, bool], _Counter] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._flags: dict[str, bool] = {}
        self._flags_version = 0
        self._claims: dict[str, float] = {}
        self._ranges = LiveRanges()
        self._retention = retention
        self._run_ttl = run_ttl
        # Lifetime counters by last write, oldest first (see the module docstring).
        self._runs: OrderedDict[tuple[str, Window, bool], _Counter] = OrderedDict()
        self._ops = 0

    # -- reservations -------------------------------------------------------------
    async def reserve(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float
    ) -> Denial | None:
        check_holds(request_id, holds, lease, now)
        return self.reserve_now(request_id, holds, lease=lease, now=now)

    def reserve_now(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float
    ) -> Denial | None:
        """reserve() without awaiting (inputs already checked)."""
        found = self._reservations.get(request_id)
        if found is not None:
            if found.state == HELD:
                return None
            raise InvalidRequest(f"request_id {request_id!r} was already {found.state}; "
                                 "use a new id for a new reservation")
        plan: list[tuple[Hold, _Counter, int]] = []
        for hold in holds:
            counter = self._counter(hold.key, hold.window, hold.rolling)
            self._reclaim(counter, now)
            if hold.window is Window.RUN:
                self._expire_run(counter, now)
            oldest, current = self._ranges.get(hold.window, now, hold.rolling)
            used, reserved, first = counter.totals(oldest, current)
            if hold.amount > 0 and used + reserved + hold.amount > hold.limit:
                return Denial(
                    key=hold.key, limit=hold.limit, used=used + reserved,
                    requested=hold.amount,
                    reset_at=room_returns_at(hold.window, now, hold.rolling, first),
                    window=hold.window, metric=hold.metric,
                )
            plan.append((hold, counter, current))
        expires = now + lease
        lines = []
        for hold, counter, wid in plan:
            counter.cell(wid)[1] += hold.amount
            counter.leases[request_id] = expires
            counter.next_expiry = min(counter.next_expiry, expires)
            lines.append(_Line(hold, counter, wid))
            if hold.window is Window.RUN:
                self._wrote(hold, counter, now)
        self._reservations[request_id] = _Reservation(lines, expires)
        self._tick(now)
        return None

    async def extend(
        self, request_id: str, more: Mapping[str, int], *, lease: float, now: float
    ) -> Denial | NotHeld | None:
        grow = check_extend(request_id, more, lease, now)
        return self.extend_now(request_id, grow, lease=lease, now=now)

    def extend_now(self, request_id: str, grow: Mapping[str, int], *, lease: float,
                   now: float) -> Denial | NotHeld | None:
        """extend() without awaiting (inputs already checked)."""
        found = self._reservations.get(request_id)
        if found is None:
            return NotHeld(request_id, "unknown")
        if found.state != HELD:
            return NotHeld(request_id, found.state)
        if found.expires <= now:
            return NotHeld(request_id, "expired")
        growing = [(line, grow[line.metric]) for line in found.lines if line.metric in grow]
        for line, more in growing:
            counter, hold = line.counter, line.hold
            self._reclaim(counter, now)
            oldest, current = self._ranges.get(hold.window, now, hold.rolling)
            if not hold.rolling and line.wid != current:
                continue  # its window ended: that bucket is closed and limits no more
            used, reserved, first = counter.totals(oldest, current)
            if used + reserved + more > hold.limit:
                return Denial(
                    key=hold.key, limit=hold.limit, used=used + reserved, requested=more,
                    reset_at=room_returns_at(hold.window, now, hold.rolling, first),
                    window=hold.window, metric=hold.metric,
                )
        expires = found.expires = found.touched = now + lease
        for line, more in growing:
            line.counter.cell(line.wid)[1] += more
            line.amount += more
        for line in found.lines:
            counter = line.counter
            counter.leases[request_id] = expires
            counter.next_expiry = min(counter.next_expiry, expires)  # (it may shrink)
            if line.hold.window is Window.RUN:
                self._wrote(line.hold, counter, now)
        return None

    async def settle(
        self, request_id: str, actual: Mapping[str, int], *, now: float
    ) -> SettleResult:
        check_actual(request_id, actual, now)
        return self.settle_now(request_id, actual, now=now)

    def settle_now(self, request_id: str, actual: Mapping[str, int], *, now: float
                   ) -> SettleResult:
        """settle() without awaiting. A reservation whose lease expired is still
        charged its actual usage (the call happened); its hold is removed only once."""
        found = self._reservations.get(request_id)
        if found is None or found.state != HELD:
            return SettleResult(already_settled=True)
        charged: dict[str, int] = {}
        overrun: dict[str, int] = {}
        for line in found.lines:
            cell = line.counter.cell(line.wid)
            if line.live:
                cell[1] -= line.amount
                line.counter.leases.pop(request_id, None)
                line.live = False
            spent = actual.get(line.metric, 0)
            cell[0] += spent
            if line.hold.window is Window.RUN:
                self._wrote(line.hold, line.counter, now)
            charged[line.key] = spent
            if spent > line.amount:
                overrun[line.key] = spent - line.amount
        found.state = SETTLED
        found.touched = now
        return SettleResult(charged=charged, overrun=overrun)

    async def release(self, request_id: str, *, now: float) -> None:
        check_request(request_id, now)
        found = self._reservations.get(request_id)
        if found is None or found.state != HELD:
            return
        for line in found.lines:
            if line.live:
                line.counter.cell(line.wid)[1] -= line.amount
                line.counter.leases.pop(request_id, None)
                line.live = False
        found.state = RELEASED
        found.touched = now

    async def reserve_and_read(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float,
        read: Sequence[Hold],
    ) -> tuple[Denial | None, list[LimitUsage]]:
        check_holds(request_id, holds, lease, now)
        denial = self.reserve_now(request_id, holds, lease=lease, now=now)
        return denial, [] if denial is not None else self._read(read, now)

    async def finish_and_read(
        self, request_id: str, actual: Mapping[str, int] | None, *, now: float,
        read: Sequence[Hold],
    ) -> tuple[SettleResult, list[LimitUsage]]:
        if actual is None:
            await self.release(request_id, now=now)
            result = SettleResult()
        else:
            result = await self.settle(request_id, actual, now=now)
        return result, self._read(read, now)

    def _read(self, holds: Sequence[Hold], now: float) -> list[LimitUsage]:
        return [self.usage_now(h.key, limit=h.limit, window=h.window, rolling=h.rolling,
                               now=now) for h in holds]

    async def usage(
        self, key: str, *, limit: int, window: Window, rolling: bool = False, now: float
    ) -> LimitUsage:
        check_usage_args(key, limit, window, now)
        return self.usage_now(key, limit=limit, window=window, rolling=rolling, now=now)

    def usage_now(self, key: str, *, limit: int, window: Window, rolling: bool, now: float
                  ) -> LimitUsage:
        """usage() without awaiting (inputs already checked)."""
        counter = self._counter(key, window, rolling)
        self._reclaim(counter, now)
        if window is Window.RUN:
            self._expire_run(counter, now)
        oldest, current = self._ranges.get(window, now, rolling)
        used, reserved, first = counter.totals(oldest, current)
        return LimitUsage(key=key, limit=limit, used=used, reserved=reserved,
                          reset_at=room_returns_at(window, now, rolling, first))

    def _counter(self, key: str, window: Window, rolling: bool) -> _Counter:
        name = (key, window, rolling)  # the same key under another window never mixes
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = _Counter()
        return counter

    def _reclaim(self, counter: _Counter, now: float) -> None:
        """Return the amounts of expired leases on this counter."""
        if now < counter.next_expiry:
            return
        expired = [rid for rid, until in counter.leases.items() if until <= now]
        for rid in expired:
            del counter.leases[rid]
            for line in self._reservations[rid].lines:
                if line.counter is counter and line.live:
                    line.counter.cell(line.wid)[1] -= line.amount
                    line.live = False
        counter.next_expiry = min(counter.leases.values(), default=math.inf)

    def _wrote(self, hold: Hold, counter: _Counter, now: float) -> None:
        """A lifetime counter was written at `now`: it moves to the young end."""
        counter.written = max(counter.written, now)
        name = (hold.key, hold.window, hold.rolling)
        self._runs[name] = counter
        self._runs.move_to_end(name)

    def _expire_run(self, counter: _Counter, now: float) -> None:
        """A lifetime counter untouched for run_ttl and holding nothing counts as empty."""
        if counter.written + self._run_ttl < now and not counter.leases and counter.cells:
            counter.cells.clear()

    def _drop_old_runs(self, now: float) -> None:
        """Forget the lifetime counters nobody wrote to for run_ttl (oldest first)."""
        runs, cutoff = self._runs, now - self._run_ttl
        while runs:
            name, counter = next(iter(runs.items()))
            if counter.written >= cutoff:
                return
            del runs[name]
            if counter.leases:  # still held (a lease longer than run_ttl): not yet
                runs[name] = counter
                return
            if self._counters.get(name) is counter:
                del self._counters[name]

    def _tick(self, now: float) -> None:
        """Now and then forget reservations finished (or expired) long ago; drop the
        lifetime counters nobody wrote to for run_ttl."""
        if self._runs:
            self._drop_old_runs(now)
        self._ops += 1
        if self._ops % SWEEP_EVERY:
            return
        cutoff = now - self._retention
        old = [rid for rid, r in self._reservations.items()
               if r.touched < cutoff and not any(line.live for line in r.lines)]
        for rid in old:
            del self._reservations[rid]

    # -- flags and claims -----------------------------------------------------------
    async def get_flag(self, name: str) -> bool | None:
        return self._flags.get(name)

    async def set_flag(self, name: str, on: bool) -> None:
        check_flag(name, on)
        self._flags[name] = on
        self._flags_version += 1

    async def clear_flag(self, name: str) -> bool:
        check_flag_name(name)
        found = self._flags.pop(name, None) is not None
        self._flags_version += 1
        return found

    async def flags(self) -> dict[str, bool]:
        return dict(self._flags)

    async def flags_version(self) -> int:
        return self._flags_version

    async def claim(self, key: str, ttl: float, *, now: float) -> bool:
        check_time("ttl", ttl)
        check_time("now", now)
        if self._claims.get(key, -math.inf) > now:
            return False
        self._claims[key] = now + ttl
        return True

    @property
    def in_memory(self) -> tuple[list[str], list[str]]:
        """(reservation ids, counters) the store still keeps, counters by their storage
        name (`counter_name`): what the sweeps have not let go of yet."""
        return list(self._reservations), [counter_name(*name) for name in self._counters]

    async def close(self) -> None:
        return None
