"""The tree tells the architecture (docs/architecture.md, The tree): no import circle,
the lower layers import nothing above them, and no private name crosses a wing border."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "tallygate"
VOCABULARY = {"types", "errors", "units", "extras", "sqlite_thread", "sqlite_wal", "pg_link"}

# wing → the wings it may import (besides itself); the vocabulary's own rules first.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "types": {"errors"},
    "units": {"errors", "types"},
    "extras": {"errors"},
    "sqlite_wal": set(),
    "pg_link": {"errors"},
    "sqlite_thread": {"errors", "sqlite_wal"},
    "core": {"errors", "types"},
    "providers": {"core", "errors", "types"},
    "config": {"core", *VOCABULARY},
    "ledger": VOCABULARY,
    "state": {"core", "ledger", *VOCABULARY},  # owner mode reuses the ledger's journal
    "keys": {"config", *VOCABULARY},
    "cache": VOCABULARY,
    "engine": {"cache", "config", "core", "providers", "state", *VOCABULARY},
    "reports": {"config", "core", "keys", "ledger", "state", *VOCABULARY},
}


def wing_of(module: str) -> str:
    return module.split(".")[1] if "." in module else "tallygate"


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("tallygate.")}


def wing_files(wing: str) -> list[Path]:
    single = SRC / f"{wing}.py"
    return [single] if single.exists() else sorted((SRC / wing).rglob("*.py"))


@pytest.mark.parametrize("wing", sorted(ALLOWED))
def test_a_lower_layer_imports_nothing_above_it(wing: str) -> None:
    above = {f"{path.relative_to(SRC)} imports {module}"
             for path in wing_files(wing) for module in imports(path)
             if wing_of(module) not in ALLOWED[wing] | {wing}}
    assert not above


def test_no_import_circle() -> None:
    done = subprocess.run([sys.executable, "scripts/import_cycles.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith(" 0 circles"), done.stdout


def private_crossings(source: str, module: str) -> set[str]:
    """`from tallygate.<other wing>… import _name`, and `alias._name` on a module imported
    from another wing: a wing's private names stay inside it."""
    own = wing_of(module)
    found: set[str] = set()
    aliases: dict[str, str] = {}
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("tallygate."):
            for alias in node.names:
                name = alias.name
                if wing_of(node.module) != own and name.startswith("_"):
                    found.add(f"{node.module}.{name}")
                aliases[alias.asname or name] = f"{node.module}.{name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tallygate.") and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            target = aliases.get(node.value.id)
            if target and wing_of(target) != own:
                found.add(f"{target}.{node.attr}")
    return found


def test_the_crossing_finder_sees_both_kinds() -> None:
    source = ("from tallygate.state.memory import _Cell, MemoryStore\n"
              "from tallygate.engine import _own\n"
              "import tallygate.ledger.rows as rows\n"
              "rows._sql(); MemoryStore._x; self._y\n")
    assert private_crossings(source, "tallygate.engine.call") == {
        "tallygate.state.memory._Cell", "tallygate.ledger.rows._sql",
        "tallygate.state.memory.MemoryStore._x"}


def test_no_private_name_crosses_a_wing_border() -> None:
    crossing = set()
    for path in sorted(SRC.rglob("*.py")):
        module = "tallygate." + path.relative_to(SRC).with_suffix("").as_posix().replace("/", ".")
        crossing |= {f"{path.relative_to(SRC)}: {name}"
                     for name in private_crossings(path.read_text(encoding="utf-8"), module)}
    assert not crossing
