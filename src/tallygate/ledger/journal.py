"""The local append-only journal behind the ledger writer.

Rows are appended, one orjson line each, with a single write(2) to the current *segment*
file (`seg-<pid>-<ns>-<n>.jsonl`, opened O_APPEND). The writer cuts the segment when it
takes a batch; once that batch is committed to the store the segment is unlinked. Segments
left behind by a dead process are *orphans*: the next writer started on the same directory
replays them (inserts are idempotent on request_id) and deletes them.

A live segment is held under an exclusive flock(2), so several processes may share one
journal directory: a starting writer only replays segments nobody holds; the kernel drops
the lock when its holder dies, even by SIGKILL.

Durability (see docs/ledger.md):
- `fsync="never"` (default): a row is safe once `append()` returns — the bytes are in the
  kernel page cache, which survives the death of the process (SIGKILL, OOM kill, crash).
  A power loss or kernel crash can lose the last seconds of rows.
- `fsync="batch"`: each segment is fsync'ed when it is cut (every flush interval), so a
  power loss loses at most one interval; the request path does not pay for it.
- `fsync="always"`: fsync after every append, before the response. Survives power loss;
  costs one disk flush per call on the request path (milliseconds on most disks).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tallygate.errors import ConfigError, InvalidRequest
from tallygate.ledger.rows import from_line
from tallygate.types import CallRecord

log = logging.getLogger("tallygate.ledger")
FsyncPolicy = Literal["never", "batch", "always"]
FSYNC_POLICIES: tuple[str, ...] = ("never", "batch", "always")


@dataclass(slots=True)
class Segment:
    path: Path
    fd: int


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Journal:
    """Segments of one process in `directory`. Not thread-safe: the writer locks."""

    def __init__(self, directory: str | os.PathLike[str], fsync: str = "never", *,
                 what: str = "ledger journal") -> None:
        if fsync not in FSYNC_POLICIES:
            raise ConfigError(f"{what} fsync must be one of {FSYNC_POLICIES}: {fsync!r}")
        self.directory = Path(directory)
        self.fsync: str = fsync
        self._current: Segment | None = None
        self._seq = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {what} {self.directory}: {exc}") from exc

    def append(self, line: bytes) -> None:
        """Write one line; returns once the kernel has it (see the module's contract)."""
        seg = self._current or self._open_segment()
        view = memoryview(line)
        while view:
            written = os.write(seg.fd, view)
            view = view[written:]
        if self.fsync == "always":
            os.fsync(seg.fd)

    def cut(self) -> Segment | None:
        """Stop appending to the current segment and hand it over (still locked); the
        next append opens a new one. None when nothing was appended since the last cut."""
        seg, self._current = self._current, None
        if seg is not None and self.fsync == "batch":
            os.fsync(seg.fd)
        return seg

    @staticmethod
    def commit(seg: Segment) -> None:
        """The segment's rows are in the store: delete it, then release its lock."""
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()
        os.close(seg.fd)

    def orphans(self) -> list[Segment]:
        """Segments no live writer holds (left by a process that died), oldest first.
        Each comes back locked by us: replay it, then `commit()` it."""
        found = []
        for path in sorted(self.directory.glob("seg-*.jsonl"), key=_age):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            if _lock(fd):
                found.append(Segment(path, fd))
            else:
                os.close(fd)
        return found

    @staticmethod
    def read(path: Path) -> list[CallRecord]:
        """Rows of a segment (see read_lines); a line that is not a row (torn by a full
        disk before the segment was cut) is skipped."""
        out = []
        for line in Journal.read_lines(path):
            try:
                out.append(from_line(line))
            except InvalidRequest:
                log.warning("ledger journal %s: skipped an unreadable line", path.name)
        return out

    @staticmethod
    def read_lines(path: Path) -> list[bytes]:
        """The lines of a segment. A torn last line (power loss mid-write) is skipped:
        its write(2) never returned, so no client was told the call succeeded."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # another writer replayed it first
            return []
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            lines.pop()  # no trailing newline: torn write
        return [line for line in lines if line.strip()]

    def close(self) -> None:
        """Drop an empty current segment; a non-empty one stays for the next start."""
        seg, self._current = self._current, None
        if seg is None:
            return
        if os.fstat(seg.fd).st_size == 0:
            seg.path.unlink(missing_ok=True)
        os.close(seg.fd)

    def drop(self) -> None:
        """Let go of the current segment as it is, whatever it holds (a crash test's
        "the process died here"): the next writer on the directory replays it."""
        seg, self._current = self._current, None
        if seg is not None:
            os.close(seg.fd)

    def _open_segment(self) -> Segment:
        self._seq += 1
        name = f"seg-{os.getpid()}-{time.time_ns()}-{self._seq}.jsonl"
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        _lock(fd)  # a fresh unique name: nobody else can hold it
        self._current = Segment(path, fd)
        return self._current


def _age(path: Path) -> tuple[int, str]:
    parts = path.stem.split("-")
    try:
        return int(parts[2]), path.name
    except (IndexError, ValueError):
        return 0, path.name
