"""Switching a SQLite file to WAL while other processes open it at the same moment.

The switch takes an exclusive lock, and SQLite does not wait for it on the busy timeout:
processes opening one fresh file together (`serve --workers 4` on a new key store,
scripts sharing a ledger) got "database is locked" from `PRAGMA journal_mode = WAL`
about once in twenty opens. The switch is tried again here until the busy time is spent.
"""

from __future__ import annotations

import sqlite3
import time

_PAUSE = 0.005  # seconds between tries: the holder's switch takes about a millisecond


def use_wal(conn: sqlite3.Connection, busy_ms: int) -> None:
    """`PRAGMA journal_mode = WAL` on `conn`, waiting up to `busy_ms` for the lock."""
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_PAUSE)
