"""Call ids: minted by the server, `tg-` + 32 hex digits of randomness.

Every reservation and every ledger row is keyed on one of these, never on anything a
caller sent: a caller who sees one id learns nothing about the next (a counter would let
it pre-use or collide with another user's ids). 128 random bits: collisions never.

The bits come from the operating system's CSPRNG (`os.urandom`) 256 ids at a time: one
getrandom(2) per call was a system call on the request path, and one that lets go of the
GIL (any other thread then holds the event loop up until it gives it back). A forked
child starts a fresh pool, so two processes never hand out the same ids."""

from __future__ import annotations

import os
import threading

_BATCH = 256  # ids per getrandom(2)
_pool: list[str] = []
_lock = threading.Lock()  # the library mints ids on its own threads too


def new_call_id() -> str:
    try:
        return _pool.pop()
    except IndexError:
        with _lock:
            if not _pool:
                raw = os.urandom(16 * _BATCH).hex()
                _pool.extend("tg-" + raw[i:i + 32] for i in range(0, len(raw), 32))
            return _pool.pop()


def _forget_after_fork() -> None:
    global _lock
    _pool.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
