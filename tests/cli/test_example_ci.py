"""examples/ci: the local script runs the workflow's steps green against the simulator,
and the workflow runs the same commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.cli import git_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ci"


def test_the_local_script_runs_green(tmp_path: Path) -> None:
    work = tmp_path / "work"
    bin_dir = Path(sys.executable).parent
    env = {**git_env(tmp_path), "PYTHON": sys.executable,
           "TALLYGATE": str(bin_dir / "tallygate"),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run(["bash", str(EXAMPLE / "run-local.sh"), str(work)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "tallygate check: 3 files within 3 budgets vs HEAD" in out
    assert "3 chunks: 3 calls" in out
    assert "0 calls, 0 tokens ($0.00), 3 cache hits" in out
    schema = yaml.safe_load((EXAMPLE / "spec.md").read_text().split("---")[1])["schema"]
    for name in ("customers", "invoices", "reminders"):
        data = json.loads((work / "generated" / f"{name}.json").read_text())
        assert set(data) == set(schema["required"])
    summary = json.loads((work / "generated" / "tallygate-gen.json").read_text())
    assert summary["run"] == "local-2" and summary["saved_tokens"] > 0


def test_the_workflow_runs_the_same_steps() -> None:
    workflow = yaml.safe_load((EXAMPLE / "github-workflow.yml").read_text())
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    commands = " ".join(s.get("run", "") for s in steps)
    script = (EXAMPLE / "run-local.sh").read_text()
    for command in ("tallygate check --config tallygate.yaml", "--compare-to",
                    "tallygate gen spec.md --out generated --dry-run",
                    "tallygate gen spec.md --out generated --cache .tallygate-cache",
                    "tallygate report --by"):
        assert command in commands
        assert command.replace("tallygate ", '"$tg" ', 1) in script or command in script
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == "examples/ci/.tallygate-cache"
    assert any(s.get("name") == "Chunk spec & call AI" for s in steps)
