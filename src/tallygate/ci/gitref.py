"""The files of a git commit, for `tallygate check --compare-to REF`.

Read with plumbing commands (`git rev-parse`, `git ls-tree -z`, one `git cat-file
--batch` for every blob), so file names need no unquoting and bytes come back raw.
Paths are relative to `base`, the directory the `check:` globs are relative to."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tallygate.errors import InvalidRequest

_TIMEOUT = 120.0
MAX_REF_CHARS = 256


def _git(base: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["git", *args], cwd=base, input=stdin, capture_output=True,
                              timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise InvalidRequest("--compare-to needs git, which is not installed") from None
    except subprocess.TimeoutExpired:
        raise InvalidRequest(f"git {args[0]} took longer than {_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InvalidRequest(f"git {args[0]} failed: {why[-1] if why else 'no message'}")
    return done.stdout


class GitTree:
    """The tree of commit `ref` seen from `base` (a directory inside the work tree)."""

    def __init__(self, base: Path, ref: str) -> None:
        if (not ref or len(ref) > MAX_REF_CHARS or ref.startswith("-")
                or any(ch.isspace() or ord(ch) < 32 for ch in ref)):
            raise InvalidRequest(f"--compare-to {ref!r}: expected a git ref such as "
                                 "origin/main, HEAD~1 or a commit id")
        self.base = base
        self.ref = ref
        try:
            inside = _git(base, "rev-parse", "--is-inside-work-tree").strip() == b"true"
        except InvalidRequest:
            inside = False
        if not inside:
            raise InvalidRequest(f"--compare-to: {base} is not inside a git work tree")
        try:
            self.commit = _git(base, "rev-parse", "--verify", "--quiet",
                               f"{ref}^{{commit}}").decode().strip()
        except InvalidRequest:
            raise InvalidRequest(f"--compare-to {ref!r}: no such commit in this "
                                 "repository (fetch it first, e.g. fetch-depth: 0)") from None
        self._files: list[str] | None = None

    def files(self) -> list[str]:
        """Every file of the commit under `base`, relative to it."""
        if self._files is None:
            raw = _git(self.base, "ls-tree", "-r", "-z", "--name-only", self.commit)
            self._files = sorted(n.decode("utf-8", "surrogateescape")
                                 for n in raw.split(b"\0") if n)
        return list(self._files)

    def read(self, paths: list[str]) -> dict[str, bytes]:
        """The contents at the commit of those of `paths` that exist there."""
        if not paths:
            return {}
        wanted = [p for p in paths if "\n" not in p]
        request = "".join(f"{self.commit}:./{p}\n" for p in wanted)
        out = _git(self.base, "cat-file", "--batch",
                   stdin=request.encode("utf-8", "surrogateescape"))
        return dict(_parse_batch(out, wanted))


def _parse_batch(out: bytes, paths: list[str]) -> list[tuple[str, bytes]]:
    """`git cat-file --batch` output: per request `<oid> <type> <size>\\n<bytes>\\n`, or
    `<name> missing\\n` (also `ambiguous`)."""
    found: list[tuple[str, bytes]] = []
    pos = 0
    for path in paths:
        end = out.index(b"\n", pos)
        header = out[pos:end].split(b" ")
        pos = end + 1
        if len(header) == 3 and header[1] == b"blob":
            size = int(header[2])
            found.append((path, out[pos : pos + size]))
            pos += size + 1
        elif len(header) == 3:  # a tree or other object under that name: skip its body
            pos += int(header[2]) + 1
    return found
