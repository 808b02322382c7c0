"""State-store test helpers."""

from __future__ import annotations

import os

from tallygate.state.file_lock import release
from tallygate.state.sqlite_owner import OwnedSqliteStore


async def abandon(store: OwnedSqliteStore) -> None:
    """Leave an owner as a killed process would: its journal and its last snapshot,
    nothing written since, the lock gone. (A snapshot already running in its thread is
    let finish: a thread cannot be killed; test_state_owner.py SIGKILLs a real process.)"""
    if store._flush_timer is not None:
        store._flush_timer.cancel()
        store._flush_timer = None
    if store._flushing is not None:
        await store._flushing
    store._closing = True
    current = store._journal._current
    for segment in [*store._unwritten, *([current] if current else [])]:
        os.close(segment.fd)
    await store._flags.close()
    store._reader.close()
    store._db.close()
    release(store._lock)
    store._lock = None
