"""A cache backend in a local directory: one file per entry, written atomically (a
temporary file renamed into place), so a directory that `actions/cache` saves and
restores between CI runs is a cache shared by every run of a branch.

Entries are opaque signed bytes (cache/signed.py checks them); expiry is in the signed
envelope, so this backend keeps no clock and deletes nothing. A file larger than
`max_bytes` is not read (a cache restored from elsewhere is input like any other)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path

MAX_ENTRY_BYTES = 16 * 1024 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class DirectoryBackend:
    def __init__(self, root: str | os.PathLike[str], *,
                 max_bytes: int = MAX_ENTRY_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def path_of(self, key: str) -> Path:
        """`<root>/<2 hex>/<key, made file-name safe>.entry`; the fan-out directory comes
        from the key's hash, so distinct keys never share a file."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        name = _SAFE.sub("_", key)[:120] + "-" + digest[:12]
        return self.root / digest[:2] / f"{name}.entry"

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._read, self.path_of(key))

    def _read(self, path: Path) -> bytes | None:
        try:
            with path.open("rb") as handle:
                data = handle.read(self.max_bytes + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return data if len(data) <= self.max_bytes else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        del ttl  # the signed envelope carries the expiry
        await asyncio.to_thread(self._write, self.path_of(key), value)

    @staticmethod
    def _write(path: Path, value: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(value)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def close(self) -> None:
        return None
