"""The tree tells the architecture (docs/architecture.md, The tree): no import circle,
and the lower layers import nothing above them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "tallygate"
VOCABULARY = {"types", "errors", "units", "extras", "sqlite_thread"}

# wing → the wings it may import (besides itself); the vocabulary's own rules first.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "types": {"errors"},
    "units": {"errors", "types"},
    "extras": {"errors"},
    "sqlite_thread": {"errors"},
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
