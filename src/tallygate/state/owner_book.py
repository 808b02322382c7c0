"""The owner mode's limit tables in memory: the SQLite store's layout (state/sqlite.py)
kept as dicts, so a snapshot writes its rows 1:1 and either mode can open the file next.

cells: counter name -> {window id: [used, reserved]}. rows: request id -> _Row, every held
reservation plus the finished ones not yet written to SQLite (older finished ones are
looked up there). Expired leases are reclaimed globally, as in SQLite (a heap ordered by
expiry), so a row's lines are all live or all given back.

Pure and synchronous: every operation is decided from the tables and its arguments alone
(time is passed in), which is what lets the owner replay its journal after a crash and
land on exactly the state it had. The only state change no journaled operation implies
is a reclaim made by a read or a refused reservation (or extension); `reclaims` counts
those so the owner journals them too.

Lifetime counters (`Window.RUN`) keep their last write in `runs` (oldest first), as
SQLite's state_runs: one untouched for `run_ttl` that holds nothing reads as empty, is
cleared before it is written again, and is dropped as reservations pass. Both follow
from the operations' own times, so a replay lands on the same state."""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tallygate.core.windows import LiveRanges, counter_name, room_returns_at
from tallygate.errors import InvalidRequest
from tallygate.state.base import RUN_TTL
from tallygate.types import Denial, Hold, LimitUsage, Metric, NotHeld, SettleResult, Window

HELD, SETTLED, RELEASED = "held", "settled", "released"
SWEEP_BATCH = 2000  # counters checked for stale windows per snapshot (≈1 ms)
# counter, window id, amount, metric, key, limit (None: reserved before extend existed)
Line = tuple[str, int, int, str, str, int | None]
RUN_PREFIX = counter_name("", Window.RUN, False)


class _Row:
    __slots__ = ("expires", "lines", "live", "state")

    def __init__(self, state: str, live: bool, expires: float, lines: list[Line]) -> None:
        self.state = state
        self.live = live  # its amounts still count as reserved
        self.expires = expires  # lease end while held; finish time afterwards
        self.lines = lines  # emptied once finished (only the state is needed then)


@dataclass(slots=True)
class Dirty:
    """What changed since the last snapshot, as rows for state_cells / state_holds."""

    cells: list[tuple[str, int, int, int]] = field(default_factory=list)
    gone: set[tuple[str, int]] = field(default_factory=set)  # cells out of their window
    holds: list[tuple[str, str, int, float, list[Line]]] = field(default_factory=list)
    cell_keys: set[tuple[str, int]] = field(default_factory=set)
    row_keys: set[str] = field(default_factory=set)
    runs: list[tuple[str, float]] = field(default_factory=list)  # for state_runs
    runs_gone: set[str] = field(default_factory=set)
    run_keys: set[str] = field(default_factory=set)


class Book:
    def __init__(self, finished_state: Callable[[str], str | None], *,
                 run_ttl: float = RUN_TTL) -> None:
        self.cells: dict[str, dict[int, list[int]]] = {}
        self.rows: dict[str, _Row] = {}
        self.runs: OrderedDict[str, float] = OrderedDict()  # lifetime counter -> last write
        self.reclaims = 0
        self.run_ttl = run_ttl
        self._finished_state = finished_state  # a request id's state in SQLite, if any
        self._heap: list[tuple[float, str]] = []
        self._ranges = LiveRanges()
        self._dirty_cells: set[tuple[str, int]] = set()
        self._dirty_rows: set[str] = set()
        self._gone_cells: set[tuple[str, int]] = set()  # dropped: to delete in SQLite
        self._dirty_runs: set[str] = set()
        self._gone_runs: set[str] = set()
        self._sweep_queue: list[str] = []

    # -- loading a snapshot -----------------------------------------------------------
    def load_cell(self, counter: str, wid: int, used: int, reserved: int) -> None:
        self.cells.setdefault(counter, {})[wid] = [used, reserved]

    def load_row(self, rid: str, live: bool, expires: float,
                 lines: Iterable[Sequence[Any]]) -> None:
        self.rows[rid] = _Row(HELD, live, expires, [_line(line) for line in lines])
        if live:
            heapq.heappush(self._heap, (expires, rid))

    def load_run(self, counter: str, touched: float) -> None:
        """A state_runs row (load them oldest first)."""
        self.runs[counter] = touched

    # -- operations ---------------------------------------------------------------------
    def reserve(self, rid: str, holds: Sequence[Hold], lease: float, now: float,
                read: Sequence[Hold]) -> tuple[Denial | None, list[LimitUsage], bool]:
        """(denial, usage of `read`, whether a reservation was made)."""
        row = self.rows.get(rid)
        state = row.state if row is not None else self._finished_state(rid)
        if state is not None:
            if state == HELD:
                return None, self.read(read, now), False
            raise InvalidRequest(f"request_id {rid!r} was already {state}; "
                                 "use a new id for a new reservation")
        self.reclaim(now)
        if self.runs:
            self._drop_old_runs(now)
        lines: list[Line] = []
        for hold in holds:
            counter = counter_name(hold.key, hold.window, hold.rolling)
            if hold.window is Window.RUN:
                self._renew_run(counter, now)
            oldest, current = self._ranges.get(hold.window, now, hold.rolling)
            used, reserved, first = self._totals(counter, oldest, current)
            if hold.amount > 0 and used + reserved + hold.amount > hold.limit:
                return Denial(
                    key=hold.key, limit=hold.limit, used=used + reserved,
                    requested=hold.amount,
                    reset_at=room_returns_at(hold.window, now, hold.rolling, first),
                    window=hold.window, metric=hold.metric), [], False
            # (metric: a StrEnum, equal to and hashed as its value, as loaded lines have)
            lines.append((counter, current, hold.amount, hold.metric, hold.key, hold.limit))
        for counter, wid, amount, *_ in lines:
            if amount:
                self._cell(counter, wid)[1] += amount
            if counter.startswith(RUN_PREFIX):
                self._wrote(counter, now)
        expires = now + lease
        self.rows[rid] = _Row(HELD, True, expires, lines)
        self._dirty_rows.add(rid)
        heapq.heappush(self._heap, (expires, rid))
        return None, self.read(read, now), True

    def extend(self, rid: str, grow: Mapping[str, int], lease: float, now: float
               ) -> tuple[Denial | NotHeld | None, bool]:
        """StateStore.extend: (result, whether the reservation changed)."""
        row = self.rows.get(rid)
        if row is None:  # held rows are always in memory
            return NotHeld(rid, self._finished_state(rid) or "unknown"), False
        if row.state != HELD:
            return NotHeld(rid, row.state), False
        if not row.live or row.expires <= now:
            return NotHeld(rid, "expired"), False
        self.reclaim(now)  # other expired leases give their room back first
        lines = list(row.lines)
        for i, (counter, wid, amount, metric, key, limit) in enumerate(lines):
            more = grow.get(metric)
            if not more:
                continue
            if limit is None:  # reserved before extend() existed: its limit is unknown
                return NotHeld(rid, "unknown"), False
            kind, window_name, _ = counter.split(":", 2)
            window = Window(window_name)
            oldest, current = self._ranges.get(window, now, kind == "r")
            if kind == "c" and wid != current:
                pass  # its window ended: that bucket is closed and limits no more
            else:
                used, reserved, first = self._totals(counter, oldest, current)
                if used + reserved + more > limit:
                    return Denial(key=key, limit=limit, used=used + reserved,
                                  requested=more,
                                  reset_at=room_returns_at(window, now, kind == "r", first),
                                  window=window, metric=Metric(metric)), False
            lines[i] = (counter, wid, amount + more, metric, key, limit)
        for (counter, wid, grown, *_), (_, _, amount, *_) in zip(lines, row.lines,
                                                                  strict=True):
            if grown != amount:
                self._cell(counter, wid)[1] += grown - amount
            if counter.startswith(RUN_PREFIX):
                self._wrote(counter, now)
        row.lines = lines
        row.expires = now + lease
        heapq.heappush(self._heap, (row.expires, rid))
        self._dirty_rows.add(rid)
        return None, True

    def finish(self, rid: str, actual: Mapping[str, int] | None, now: float,
               read: Sequence[Hold]) -> tuple[SettleResult, list[LimitUsage], bool]:
        """Settle (actual given) or release (None): (result, usage, whether it changed
        anything). An expired reservation is still charged its actual usage (the call
        happened); its hold is given back exactly once."""
        row = self.rows.get(rid)
        if row is None or row.state != HELD:  # held rows are always in memory
            return SettleResult(already_settled=actual is not None), self.read(read, now), False
        charged: dict[str, int] = {}
        overrun: dict[str, int] = {}
        for counter, wid, amount, metric, key, _ in row.lines:
            spent = 0 if actual is None else actual.get(metric, 0)
            held = amount if row.live else 0
            if spent and counter.startswith(RUN_PREFIX):
                if not row.live:  # (a live hold keeps its counter fresh)
                    self._renew_run(counter, now)
                self._wrote(counter, now)
            if spent or held:
                cell = self._cell(counter, wid)
                cell[0] += spent
                cell[1] -= held
            if actual is not None:
                charged[key] = spent
                if spent > amount:
                    overrun[key] = spent - amount
        row.state = RELEASED if actual is None else SETTLED
        row.live = False
        row.expires = now
        row.lines = []
        self._dirty_rows.add(rid)
        return SettleResult(charged=charged, overrun=overrun), self.read(read, now), True

    def usage(self, key: str, limit: int, window: Window, rolling: bool, now: float
              ) -> LimitUsage:
        self.reclaim(now)
        return self.read([Hold(key, 0, limit, window, rolling=rolling)], now)[0]

    def read(self, holds: Sequence[Hold], now: float) -> list[LimitUsage]:
        out = []
        for hold in holds:
            counter = counter_name(hold.key, hold.window, hold.rolling)
            used, reserved, first = self._totals(
                counter, *self._ranges.get(hold.window, now, hold.rolling))
            if hold.window is Window.RUN and not reserved and self._stale(counter, now):
                used, first = 0, None
            out.append(LimitUsage(key=hold.key, limit=hold.limit, used=used,
                                  reserved=reserved,
                                  reset_at=room_returns_at(hold.window, now, hold.rolling,
                                                           first)))
        return out

    def reclaim(self, now: float) -> None:
        """Give back the amounts of every lease that has expired (any limit)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires, rid = heapq.heappop(heap)
            row = self.rows.get(rid)
            if row is None or not row.live or row.expires != expires:
                continue  # finished meanwhile
            for counter, wid, amount, *_ in row.lines:
                if amount:
                    self._cell(counter, wid)[1] -= amount
            row.live = False
            self._dirty_rows.add(rid)
            self.reclaims += 1

    # -- snapshots ------------------------------------------------------------------------
    def take_dirty(self) -> Dirty:
        """The changed rows, as they are now; the next snapshot starts empty."""
        dirty = Dirty(cell_keys=self._dirty_cells, row_keys=self._dirty_rows,
                      gone=self._gone_cells, run_keys=self._dirty_runs,
                      runs_gone=self._gone_runs)
        self._dirty_cells, self._dirty_rows, self._gone_cells = set(), set(), set()
        self._dirty_runs, self._gone_runs = set(), set()
        dirty.runs = [(c, self.runs[c]) for c in dirty.run_keys if c in self.runs]
        for counter, wid in dirty.cell_keys:
            cell = self.cells.get(counter, {}).get(wid)
            if cell is not None:  # (None: dropped as out of its window; so is SQLite's)
                dirty.cells.append((counter, wid, cell[0], cell[1]))
        for rid in dirty.row_keys:
            row = self.rows[rid]  # finished rows leave only once written (written())
            dirty.holds.append((rid, row.state, int(row.live), row.expires, row.lines))
        return dirty

    def written(self, dirty: Dirty) -> list[str]:
        """`dirty` is in SQLite: forget its finished rows (looked up there from now on;
        their ids are returned), and drop heap entries of finished leases when they
        outnumber the live ones."""
        forgotten = []
        for rid in dirty.row_keys:
            row = self.rows.get(rid)
            # (a row finished while it was being written as held is dirty again: kept)
            if row is not None and row.state != HELD and rid not in self._dirty_rows:
                del self.rows[rid]
                forgotten.append(rid)
        if len(self._heap) > 2 * len(self.rows) + 1024:
            self._heap = [(row.expires, rid) for rid, row in self.rows.items() if row.live]
            heapq.heapify(self._heap)
        return forgotten

    def not_written(self, dirty: Dirty) -> None:
        """Writing `dirty` failed: its rows go into the next snapshot again."""
        self._dirty_cells |= dirty.cell_keys
        self._dirty_rows |= dirty.row_keys
        self._gone_cells |= dirty.gone
        self._dirty_runs |= dirty.run_keys
        self._gone_runs |= dirty.runs_gone

    @property
    def has_changes(self) -> bool:
        return bool(self._dirty_cells or self._dirty_rows or self._gone_cells
                    or self._dirty_runs or self._gone_runs)

    # -- lifetime counters ----------------------------------------------------------
    def _stale(self, counter: str, now: float) -> bool:
        touched = self.runs.get(counter)
        return touched is not None and touched + self.run_ttl < now

    def _renew_run(self, counter: str, now: float) -> None:
        """Before writing a lifetime counter: empty it if nobody wrote to it for run_ttl
        and it holds nothing (it reads as empty already; the write must not revive it)."""
        cells = self.cells.get(counter)
        if cells and self._stale(counter, now) and not any(c[1] for c in cells.values()):
            self._drop(counter, cells, list(cells))

    def _wrote(self, counter: str, now: float) -> None:
        self.runs[counter] = max(self.runs.get(counter, now), now)
        self.runs.move_to_end(counter)
        self._dirty_runs.add(counter)
        self._gone_runs.discard(counter)

    def _drop_old_runs(self, now: float) -> None:
        """Forget lifetime counters nobody wrote to for run_ttl (oldest first; one still
        holding an amount, from a lease longer than run_ttl, goes to the back)."""
        runs, cutoff = self.runs, now - self.run_ttl
        while runs:
            counter, touched = next(iter(runs.items()))
            if touched >= cutoff:
                return
            del runs[counter]
            cells = self.cells.get(counter)
            if cells and any(c[1] for c in cells.values()):
                runs[counter] = touched
                return
            if cells:
                self._drop(counter, cells, list(cells))
            self._dirty_runs.discard(counter)
            self._gone_runs.add(counter)

    # -- cells ------------------------------------------------------------------------
    def _cell(self, counter: str, wid: int) -> list[int]:
        self._dirty_cells.add((counter, wid))
        cells = self.cells.get(counter)
        if cells is None:
            cells = self.cells[counter] = {}
        cell = cells.get(wid)
        if cell is None:
            cell = cells[wid] = [0, 0]
        return cell

    def _totals(self, counter: str, oldest: int, current: int
                ) -> tuple[int, int, int | None]:
        """used, reserved and the oldest non-empty window id in [oldest, current]; cells
        that left the window are dropped when met."""
        cells = self.cells.get(counter)
        if not cells:
            return 0, 0, None
        used = reserved = 0
        first: int | None = None
        stale: list[int] | None = None  # (rare: no list made per call)
        for wid, (u, r) in cells.items():
            if wid < oldest:
                if stale is None:
                    stale = []
                stale.append(wid)
            elif wid <= current:
                used += u
                reserved += r
                if (u or r) and (first is None or wid < first):
                    first = wid
        if stale:
            self._drop(counter, cells, stale)
        return used, reserved, first

    def _drop(self, counter: str, cells: dict[int, list[int]], wids: list[int]) -> None:
        for wid in wids:
            del cells[wid]
            self._gone_cells.add((counter, wid))
        if not cells:
            del self.cells[counter]

    def sweep(self, now: float, budget: int = SWEEP_BATCH) -> None:
        """Drop cells that left their window from up to `budget` counters, resuming where
        the last call stopped: a limit nobody uses again (a user who never comes back)
        must not keep its old windows in memory forever."""
        if not self._sweep_queue:
            self._sweep_queue = list(self.cells)
        batch = self._sweep_queue[-budget:]
        del self._sweep_queue[-budget:]
        for counter in batch:
            cells = self.cells.get(counter)
            if not cells:
                continue
            kind, window, _ = counter.split(":", 2)
            try:
                oldest, _ = self._ranges.get(Window(window), now, kind == "r")
            except ValueError:  # not a name counter_name() makes: leave it alone
                continue
            stale = [wid for wid in cells if wid < oldest]
            if stale:
                self._drop(counter, cells, stale)


def _line(line: Sequence[Any]) -> Line:
    """A line as loaded from SQLite (rows written before extend() existed lack a limit)."""
    counter, wid, amount, metric, key, *rest = line
    return (counter, wid, amount, metric, key, rest[0] if rest else None)
