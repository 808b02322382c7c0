"""The documented policy (providers' `api_key: ${OPENAI_API_KEY}`) with no provider key
in the environment: every offline command works; only what calls a provider needs one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallygate.cli.main import app

POLICY = Path(__file__).resolve().parents[1] / "data" / "spec-policy.yaml"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copy(POLICY, tmp_path / "tallygate.yaml")  # found as ./tallygate.yaml
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "a.txt").write_text("Summarise this paragraph, please.\n" * 20)
    return tmp_path


OFFLINE = [  # in this order: the first ones create the SQLite storage the later read
    ["count", "prompts/a.txt", "--json"],
    ["check", "prompts", "--budget", "100000"],
    ["chunk", "prompts/a.txt", "--max-tokens", "50", "--out", "pieces"],
    ["keys", "create", "--user", "u1", "--plan", "pro", "--feature", "chat", "--json"],
    ["keys", "list", "--json"],
    ["report", "--json"],
    ["flags", "set", "chat", "off"],
    ["flags", "list", "--json"],
    ["budgets", "--json"],
]


def test_offline_commands_need_no_provider_key(workdir: Path) -> None:
    for args in OFFLINE:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        assert "OPENAI_API_KEY" not in result.stdout + result.stderr


def test_demo_needs_no_provider_key(workdir: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--seconds", "1", "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["calls"] > 0
