"""Limits used up and windows that reset: what `budget_exhausted` and `budget_reset` alert
rules need from the calls (the engine claims and sends, observe/alerts.py).

A refused call's row names the limit that refused it (`detail.limit`, engine/rows.py). The
first refusal of a limit in a window is that limit used up; when the window ends, the
limit has room again. Noting is O(1) on the request path: rows that name no limit cost a
substring test; the JSON is read only for refusals that do. A reset is remembered by the
process that saw the refusal (bounded): a replica restarted in between forgets it. A
lifetime budget (`Window.RUN`) never resets, and a rolling window frees up a little at a
time: neither has a reset to announce."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import orjson

from tallygate.core.limits import ParsedKey, parse_key
from tallygate.core.windows import bucket, bucket_bounds
from tallygate.types import CallRecord, Outcome, Window

MAX_NOTED = 10_000  # refusals between two evaluations, and windows awaiting their reset


@dataclass(frozen=True, slots=True)
class Refusal:
    """A limit that refused a call, in the window bucket of the refusal."""

    key: str
    limit: ParsedKey
    number: int  # the window bucket
    start: float
    end: float
    request_id: str
    user: str | None


class Exhaustion:
    def __init__(self) -> None:
        self._refusals: deque[Refusal] = deque(maxlen=MAX_NOTED)
        self._pending: OrderedDict[tuple[str, int], Refusal] = OrderedDict()

    def note(self, row: CallRecord) -> None:
        """A refused row that names its limit (other rows: nothing to do)."""
        if row.outcome is not Outcome.REJECTED or not row.detail \
                or '"limit"' not in row.detail:
            return
        try:
            key = orjson.loads(row.detail).get("limit")
            limit = parse_key(key) if isinstance(key, str) else None
        except (orjson.JSONDecodeError, AttributeError, ValueError):
            return
        if limit is None:
            return
        if limit.window is Window.RUN:
            number, start, end = 0, float("-inf"), float("inf")
        else:
            number = bucket(limit.window, row.ts)
            start, end = bucket_bounds(limit.window, number)
        self._refusals.append(Refusal(key, limit, number, start, end, row.request_id,
                                      row.user))

    def refusals(self) -> list[Refusal]:
        """The refusals noted since the last call, oldest first."""
        out = list(self._refusals)
        self._refusals.clear()
        return out

    def await_reset(self, refusal: Refusal) -> None:
        """Remember a used-up window until it ends (when it can reset at all)."""
        if refusal.limit.window is Window.RUN or refusal.limit.rolling:
            return
        self._pending[(refusal.key, refusal.number)] = refusal
        if len(self._pending) > MAX_NOTED:
            self._pending.popitem(last=False)

    def resets_due(self, now: float) -> list[Refusal]:
        """The used-up windows that have ended by `now` (each returned once)."""
        due = [r for r in self._pending.values() if r.end <= now]
        for refusal in due:
            del self._pending[(refusal.key, refusal.number)]
        return due
