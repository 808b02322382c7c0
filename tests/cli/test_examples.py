"""examples/ci_budget_check.py runs: passes under budget (chunks written, each request
within max_input), fails the job with a clear message when the prompt file has grown
past its budget, and with --call sends governed requests to the simulated provider."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

import tallygate
from tests.support.gateway import running_sim

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "ci_budget_check.py"
SPEC = "\n\n".join(f"## Section {i}\n" + "The gateway counts tokens and settles usage. " * 12
                   for i in range(12))


def _setup(tmp_path: Path, prompt: str, **feature: object) -> list[str]:
    config = tmp_path / "tallygate.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"state": "memory://", "ledger": f"sqlite:///{tmp_path}/ledger.db"},
        "features": {"summarize": {"max_input": 300, "max_output": 20, "model": "gpt-4o-mini",
                                   **feature}},
        "plans": {"free": {"tokens_per_day": 100_000}},
    }))
    (tmp_path / "prompt.txt").write_text(prompt)
    (tmp_path / "spec.md").write_text(SPEC)
    return ["--config", str(config), "--feature", "summarize",
            "--prompt", str(tmp_path / "prompt.txt"), "--spec", str(tmp_path / "spec.md")]


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=ROOT, env={**os.environ, **(env or {})})


def test_under_budget_chunks_the_spec(tmp_path: Path) -> None:
    args = _setup(tmp_path, "Summarize the section in one sentence.")
    done = _run([*args, "--out", str(tmp_path / "chunks")])
    assert done.returncode == 0, done.stderr
    pieces = sorted((tmp_path / "chunks").glob("chunk-*.md"))
    assert len(pieces) > 1
    assert "".join(p.read_text() for p in pieces) == SPEC  # lossless
    prompt = (tmp_path / "prompt.txt").read_text()
    for piece in pieces:
        messages = [{"role": "system", "content": prompt},
                    {"role": "user", "content": piece.read_text()}]
        assert tallygate.count_tokens(messages, model="gpt-4o-mini") <= 300


def test_prompt_past_its_budget_fails_the_job(tmp_path: Path) -> None:
    args = _setup(tmp_path, "Summarize carefully. " * 80)
    done = _run(args)
    assert done.returncode == 1
    assert "::error::" in done.stderr and "prompt.txt is" in done.stderr
    assert "over its budget of 150" in done.stderr and "max_input" in done.stderr
    assert "Traceback" not in done.stderr


def test_call_sends_governed_requests(tmp_path: Path) -> None:
    args = _setup(tmp_path, "Summarize the section in one sentence.")
    with running_sim() as (sim, _):
        env = {"OPENAI_BASE_URL": sim.url + "/v1", "OPENAI_API_KEY": "sk-sim"}
        done = _run([*args, "--call"], env)
        assert done.returncode == 0, done.stderr
        assert sim.stats.count("chat/completions") > 1
        assert all(b.get("max_completion_tokens") == 20
                   for r, b in sim.stats.bodies if r == "chat/completions")
    assert "sent" in done.stdout


def test_budget_refusal_fails_with_figures(tmp_path: Path) -> None:
    args = _setup(tmp_path, "Summarize the section in one sentence.", tokens_per_day=500)
    with running_sim() as (sim, _):
        env = {"OPENAI_BASE_URL": sim.url + "/v1", "OPENAI_API_KEY": "sk-sim"}
        done = _run([*args, "--call"], env)
    assert done.returncode == 2, done.stderr
    assert "budget exhausted" in done.stderr and "limit 500" in done.stderr
