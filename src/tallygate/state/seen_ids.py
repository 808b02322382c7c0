"""Which request ids may be finished reservations in SQLite: the owner's way to skip a
SQLite lookup (≈15 µs on the request path) for the fresh id of almost every reservation.

A chain of Bloom filters over the ids that left the owner's memory (and those found in the
file at start). "No" is exact, so no lookup is needed; "maybe" (about 1% of fresh ids)
is settled by the lookup. When the newest filter is full a twice larger one is started, so
the false-positive rate stays near 1% however many ids arrive; a new one is also started
every `slot` seconds, so that filters whose every id has left SQLite (finished rows are
kept `retention` seconds) can be dropped whole: memory follows the ids SQLite keeps, not
the process's uptime. Times are the callers' clock (`now` of the operations). Ids are
hashed with Python's `hash()` (cached on the string, salted per process): the filters live
in one process's memory only and are rebuilt from the file at each start."""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("tallygate.state")
BITS_PER_ID = 10  # ≈1% false positives with 4 probes
PROBES = 4
SMALLEST = 1 << 16  # ids in the first filter (80 KiB)


class _Filter:
    __slots__ = ("bits", "capacity", "count", "first", "last", "size")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.size = capacity * BITS_PER_ID
        self.bits = bytearray(self.size // 8 + 1)
        self.count = 0
        self.first = self.last = now  # when its first and latest ids were added


class SeenIds:
    def __init__(self, expected: int = 0, *, now: float = 0.0,
                 slot: float = 3 * 3600.0) -> None:
        self._slot = slot
        self._filters = [_Filter(max(SMALLEST, 2 * expected), now)]

    @property
    def filter_count(self) -> int:
        """How many filters the chain holds now (its memory is theirs)."""
        return len(self._filters)

    def add(self, rid: str, now: float = 0.0) -> None:
        newest = self._filters[-1]
        if not newest.count:
            newest.first = now
        elif newest.count >= newest.capacity or now - newest.first >= self._slot:
            grow = 2 if newest.count >= newest.capacity else 1
            newest = _Filter(grow * newest.capacity, now)
            self._filters.append(newest)
        bits, size = newest.bits, newest.size
        for spot in _spots(rid, size):
            bits[spot >> 3] |= 1 << (spot & 7)
        newest.count += 1
        newest.last = max(newest.last, now)

    def forget_before(self, cutoff: float) -> None:
        """Drop the filters whose ids were all added before `cutoff` (they have left
        SQLite, so "no lookup" is the right answer for them now); the newest stays."""
        self._filters = [f for f in self._filters[:-1] if f.last >= cutoff] + \
            self._filters[-1:]

    def __contains__(self, rid: object) -> bool:
        if not isinstance(rid, str):
            return False
        for found in self._filters:
            bits = found.bits
            for spot in _spots(rid, found.size):
                if not bits[spot >> 3] & (1 << (spot & 7)):
                    break
            else:
                return True
        return False


def _spots(rid: str, size: int) -> list[int]:
    """PROBES bit positions by double hashing one 64-bit hash."""
    h = hash(rid)
    first = h & 0xFFFFFFFF
    step = ((h >> 32) & 0xFFFFFFFF) | 1
    return [(first + i * step) % size for i in range(PROBES)]


class SeenIdsLoader:
    """A SeenIds of the finished request ids a SQLite state file holds, built in a
    thread: a day of ids at a busy gateway is millions (≈2 s per million to hash), and
    start-up should not wait for them. Until the filter is ready every id is a "maybe"
    (the exact lookup answers). Ids added meanwhile are kept and merged in when it is.
    Everything but the build itself runs on the caller's (event loop) thread."""

    def __init__(self, path: str) -> None:
        self._pending: list[tuple[str, float]] = []
        self._built: SeenIds | None = None  # set once, by the thread
        self._ready: SeenIds | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._build, args=(path,), daemon=True,
                                        name="tg-seen-ids")
        self._thread.start()

    def add(self, rid: str, now: float) -> None:
        if self._ready is not None:
            self._ready.add(rid, now)
        else:
            self._pending.append((rid, now))

    def forget_before(self, cutoff: float) -> None:
        if self._ready is not None:
            self._ready.forget_before(cutoff)

    def maybe(self, rid: str) -> bool:
        """False only when `rid` is surely not one of the ids."""
        ready = self._ready
        if ready is None:
            built = self._built
            if built is None:
                return True
            for pending, now in self._pending:
                built.add(pending, now)
            self._pending = []
            self._ready = ready = built
        return rid in ready

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)

    def _build(self, path: str) -> None:
        try:
            db = sqlite3.connect(path)
        except sqlite3.Error:
            log.exception("state store: cannot read finished ids; exact lookups only")
            return
        try:
            finished = "FROM state_holds WHERE state != 'held'"
            # (expires of a finished row = when it finished, in the callers' clock)
            [(count, latest)] = db.execute(
                f"SELECT count(*), coalesce(max(expires), 0) {finished}").fetchall()
            seen = SeenIds(count, now=latest)
            for n, (rid,) in enumerate(db.execute(f"SELECT rid {finished}")):
                if n % 65_536 == 0 and self._stop:
                    return
                seen.add(rid, latest)
            self._built = seen
        except sqlite3.Error:
            log.exception("state store: cannot read finished ids; exact lookups only")
        finally:
            db.close()
