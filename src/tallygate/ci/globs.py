"""Path globs as `check:` entries write them, matched the same way against the working
tree and against the file list of a git commit.

`*` and `?` stay inside one path segment, `**` spans any number of directories (none
too), `[abc]` / `[!abc]` are character classes and `{a,b}` alternatives (not nested).
Paths are relative, with `/` separators; `.git` directories are never entered."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from tallygate.errors import InvalidRequest

_MAGIC = re.compile(r"[*?\[{]")


def _segment(text: str) -> str:
    """Regex of one segment (no `/` inside)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = text.find("]", i + 2 if text[i + 1 : i + 2] in ("!", "^") else i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = text[i + 1 : end]
                negate = body[:1] in ("!", "^")
                body = body[1:] if negate else body
                out.append(("[^/" if negate else "[") + body.replace("\\", "\\\\") + "]")
                i = end
        elif ch == "{":
            end = text.find("}", i)
            if end < 0:
                out.append(re.escape(ch))
            else:
                options = text[i + 1 : end].split(",")
                out.append("(?:" + "|".join(_segment(o) for o in options) + ")")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The regex a relative path must fully match."""
    parts = [p for p in pattern.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise InvalidRequest(f"glob {pattern!r} names no files")
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += _segment(part) + ("" if last else "/")
    try:
        return re.compile(regex, re.DOTALL)
    except re.error as exc:
        raise InvalidRequest(f"glob {pattern!r} is not valid ({exc.msg})") from None


def literal_root(pattern: str) -> str:
    """The leading directories without wildcards: where a walk can start."""
    parts = [p for p in pattern.replace("\\", "/").split("/") if p not in ("", ".")]
    fixed: list[str] = []
    for part in parts[:-1]:
        if _MAGIC.search(part):
            break
        fixed.append(part)
    return "/".join(fixed)


def matches(pattern: str, path: str) -> bool:
    return compile_glob(pattern).fullmatch(path) is not None


def walk(base: Path, pattern: str) -> list[str]:
    """Files under `base` matching `pattern`, as sorted relative `/` paths. Symbolic
    links to directories are not followed (no loops, no walking out of the tree)."""
    regex = compile_glob(pattern)
    root = base / literal_root(pattern)
    if not _MAGIC.search(pattern):
        rel = "/".join(p for p in pattern.replace("\\", "/").split("/") if p not in ("", "."))
        return [rel] if (base / rel).is_file() else []
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        rel_dir = Path(dirpath).relative_to(base).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for name in filenames:
            rel = prefix + name
            if regex.fullmatch(rel) and (base / rel).is_file():
                found.append(rel)
    return sorted(found)
