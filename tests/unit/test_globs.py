"""The check globs: one matcher for the working tree and for a commit's file list."""

from __future__ import annotations

from pathlib import Path

import pytest

from tallygate.ci.globs import literal_root, matches, walk
from tallygate.errors import InvalidRequest


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("prompts/*.txt", "prompts/a.txt", True),
    ("prompts/*.txt", "prompts/sub/a.txt", False),  # * stays inside a segment
    ("prompts/**/*.txt", "prompts/a.txt", True),  # ** may be no directory at all
    ("prompts/**/*.txt", "prompts/x/y/a.txt", True),
    ("prompts/**", "prompts/x/y/a.md", True),
    ("**/*.md", "README.md", True),
    ("*.{md,txt}", "a.txt", True),
    ("*.{md,txt}", "a.json", False),
    ("p?.txt", "p1.txt", True),
    ("p?.txt", "p/.txt", False),
    ("[ab].txt", "a.txt", True),
    ("[!ab].txt", "c.txt", True),
    ("[!ab].txt", "a.txt", False),
    ("a+b (1).txt", "a+b (1).txt", True),  # regex characters are literal
    ("./prompts/a.txt", "prompts/a.txt", True),
])
def test_matches(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


def test_literal_root() -> None:
    assert literal_root("prompts/chat/*.json") == "prompts/chat"
    assert literal_root("**/*.md") == ""
    assert literal_root("a/b*/c.txt") == "a"


def test_walk_skips_git_and_does_not_follow_directory_links(tmp_path: Path) -> None:
    (tmp_path / "p" / "sub").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("x")
    (tmp_path / "p" / "a.txt").write_text("a")
    (tmp_path / "p" / "sub" / "b.txt").write_text("b")
    (tmp_path / "p" / "loop").symlink_to(tmp_path / "p")
    assert walk(tmp_path, "**/*.txt") == ["p/a.txt", "p/sub/b.txt"]
    assert walk(tmp_path, "p/a.txt") == ["p/a.txt"]
    assert walk(tmp_path, "p/missing.txt") == []


def test_a_glob_naming_nothing_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        matches("./", "a")
