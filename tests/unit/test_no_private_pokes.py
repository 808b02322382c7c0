"""Tests use tallygate's public faces: no test reads, calls or patches a private name of
an object (a store's connection, a writer's queue…). What a test needs to see goes
through public API, a client of its own on the same server or file, or a real fault."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# Left on purpose, (file, name): the stream taps' deferred events are a parsing shortcut
# with no outside effect but speed; the CLI's table renderers are tested without a store.
ALLOWED = {
    ("unit/test_provider_openai.py", "_deferred"),
    ("unit/test_provider_anthropic.py", "_deferred"),
    ("unit/test_cli_tables.py", "_show_list"),
    ("unit/test_cli_tables.py", "_keys_csv"),
    ("unit/test_cli_tables.py", "_show_created"),
    ("unit/test_cli_tables.py", "_print_table"),
}


# an object's own names, and the standard library's underscored public API (os._exit)
OWN = ("self", "cls", "os", "sys")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, name) of each private name a module reaches outside its own objects:
    `x._name` (not on self/cls), `from m import _name`, `setattr(x, "_name", …)`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in OWN):
                yield node.lineno, node.attr
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name):
                    yield node.lineno, alias.name
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "setattr"):
            for arg in node.args[1:2]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                        and _private(arg.value):
                    yield node.lineno, arg.value


def test_the_finder_sees_each_kind_of_poke() -> None:
    source = ("store._redis.info()\nfrom m import _helper\n"
              "monkeypatch.setattr(store, '_write', f)\nself._ok = cls._ok\nos.__name__\n")
    assert sorted(private_uses(ast.parse(source))) == [
        (1, "_redis"), (2, "_helper"), (3, "_write")]


def test_no_test_pokes_private_names() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        where = path.relative_to(TESTS).as_posix()
        for line, name in private_uses(ast.parse(path.read_text(encoding="utf-8"))):
            if (where, name) not in ALLOWED:
                found.append(f"{where}:{line}: {name}")
    assert found == []
