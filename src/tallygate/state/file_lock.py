"""Who may touch a SQLite state file's limit tables: one owner, or any number of sharers.

An owner (state/sqlite_owner.py) keeps the counters in its memory, so nobody else may
change them behind its back; sharers (state/sqlite.py) run every operation as a SQLite
transaction and may be many. Both take flock(2) on `PATH.state-lock`, exclusive or shared
and never waiting: the second party gets a clear error at once. The kernel drops the lock
when its holder dies, even by SIGKILL. The owner writes its pid into the file so a
sharer's error can say who holds it (only an owner ever holds it exclusively)."""

from __future__ import annotations

import contextlib
import fcntl
import os

from tallygate.errors import ConfigError, StoreUnavailable


def lock_path(db_path: str) -> str:
    return db_path + ".state-lock"


def take_owner(db_path: str) -> int:
    """The exclusive lock (fd); ConfigError when any other process uses the file."""
    fd = _open(db_path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"state store {db_path!r} is in use by another process; owner mode "
            "needs it alone. Stop the other process, or set storage.state_mode: shared "
            "in every process using this file.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def take_sharer(db_path: str) -> int:
    """A shared lock (fd); StoreUnavailable while an owner holds the file."""
    fd = _open(db_path)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise StoreUnavailable(
            f"state store {db_path!r} is owned by {holder} (owner mode: "
            "its limits live in that process). Ask it over HTTP (e.g. `tallygate "
            "budgets --url`), or run every process with storage.state_mode: shared."
        ) from None
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing drops the flock


def _open(db_path: str) -> int:
    try:
        return os.open(lock_path(db_path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file of state store {db_path!r}: {exc}"
                          ) from exc


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0) or b"0")
        if pid:
            return f"process {pid}"
    return "another process"
