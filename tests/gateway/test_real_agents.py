"""The real coding agents — Claude Code 2.1.328 and Codex CLI 0.169.0, installed from the
npm registry by scripts/test.sh into .agent-clis/ — pointed at a gateway on 127.0.0.1 in
front of the simulator, the way docs/agents.md tells users to configure them. Telemetry,
update checks and other non-essential traffic are switched off; every run is bounded by a
timeout; HOME is a temporary directory. Skipped when the CLIs are not installed.

Each CLI reports the usage it was told (`--output-format json`, `exec --json`): the ledger
rows of its calls add up to exactly that, a tool round trip included. A budget refusal
whose reset is hours away ends each CLI at once."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tallygate.sim import SimServer
from tallygate.types import Outcome
from tests.support.gateway import RunningGateway, running_gateway, running_sim, sim_policy

CLIS = Path(__file__).resolve().parents[2] / ".agent-clis" / "node_modules"
CLAUDE = next(iter(sorted(CLIS.glob("@anthropic-ai/claude-code-linux-*/claude"))), None)
CODEX = CLIS / ".bin" / "codex"
RUN_TIMEOUT = 90
# Claude Code's own switches for offline use (agents-wire research, docs/agents.md).
CLAUDE_QUIET = {"DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_ERROR_REPORTING": "1",
                "DISABLE_BUG_COMMAND": "1", "DISABLE_COST_WARNINGS": "1"}
CODEX_CONFIG = """model = "gpt-6.1-sol"
model_provider = "tallygate"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.tallygate]
name = "tallygate"
base_url = "{url}/v1"
env_key = "TALLYGATE_API_KEY"
wire_api = "responses"
"""
# Streamed reservations: a turn holds its input (Claude Code ~15k, Codex ~11k) plus a
# 2,048-token output slice, and is charged what it used. These plans have room for one
# turn of each CLI, not two.
PLANS = {"pro": {"tokens_per_day": 10_000_000}, "claude-day": {"tokens_per_day": 30_000},
         "codex-day": {"tokens_per_day": 25_000}}

if os.environ.get("TALLYGATE_SKIP_AGENT_CLIS") == "1":
    pytestmark = pytest.mark.skip(reason="TALLYGATE_SKIP_AGENT_CLIS=1: the real CLIs left out")
elif CLAUDE is None or not CODEX.exists() or not os.access(CODEX, os.X_OK):
    # Missing is a failure, not a skip: scripts/test.sh installs them.
    pytest.fail("the agent CLIs are not installed: run scripts/test.sh (npm install into "
                ".agent-clis/), or set TALLYGATE_SKIP_AGENT_CLIS=1", pytrace=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, SimServer]]:
    tmp = tmp_path_factory.mktemp("agents")
    with running_sim() as (sim, _):
        policy = sim_policy(sim.url, str(tmp), features={"default": {}}, plans=PLANS)
        with running_gateway(policy) as gw:
            yield gw, sim


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    (tmp_path / "README.md").write_text("# demo project\n")
    return tmp_path


def run_claude(gw: RunningGateway, key: str, cwd: Path, prompt: str,
               *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd / "home"),
           "ANTHROPIC_BASE_URL": gw.url, "ANTHROPIC_API_KEY": key, **CLAUDE_QUIET}
    assert CLAUDE is not None
    return subprocess.run([str(CLAUDE), "-p", prompt, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False)


def run_codex(gw: RunningGateway, key: str, cwd: Path, prompt: str
              ) -> subprocess.CompletedProcess[str]:
    codex_home = cwd / "home" / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(CODEX_CONFIG.format(url=gw.url))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd / "home"),
           "CODEX_HOME": str(codex_home), "TALLYGATE_API_KEY": key}
    return subprocess.run([str(CODEX), "exec", "--json", "--skip-git-repo-check", prompt],
                          env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, check=False)


def rows_of(gw: RunningGateway, user: str) -> list[Any]:
    return [r for r in gw.rows() if r.user == user]


def test_claude_code_tool_round_trip(stack: tuple[RunningGateway, SimServer],
                                     workdir: Path) -> None:
    gw, sim = stack
    key = gw.create_key("claude-dev", "pro")
    before = len(sim.stats.bodies)
    prompt = f'Read the README. [sim-tool: Read {{"file_path": "{workdir}/README.md"}}]'
    done = run_claude(gw, key, workdir, prompt, "--output-format", "json",
                      "--allowedTools", "Read")
    assert done.returncode == 0, done.stdout[-500:] + done.stderr[-500:]
    report = json.loads(done.stdout)
    bodies = [b for r, b in list(sim.stats.bodies)[before:] if r == "messages"]
    assert len(bodies) == 2  # the tool call, then the answer to its result
    # Its default model's shape reached the provider as sent: a mid-conversation system turn.
    assert "system" in [m["role"] for m in bodies[0]["messages"]]
    assert bodies[0]["thinking"]["type"] == "adaptive"
    blocks = [b for m in bodies[1]["messages"] if isinstance(m["content"], list)
              for b in m["content"]]
    assert {"thinking", "tool_use", "tool_result"} <= {b.get("type") for b in blocks}
    rows = rows_of(gw, "claude-dev")
    assert len(rows) == 2 and all(r.outcome == Outcome.OK and r.exact for r in rows)
    usage = report["usage"]
    read, written = usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]
    assert sum(r.input_tokens for r in rows) == usage["input_tokens"] + read + written
    assert sum(r.cached_tokens for r in rows) == read
    assert sum(r.cache_write_tokens for r in rows) == written
    assert sum(r.output_tokens for r in rows) == usage["output_tokens"]
    assert sum(r.reasoning_tokens for r in rows) == usage["output_tokens_details"][
        "thinking_tokens"]
    assert "session_id" not in (rows[0].detail or "")  # the end user is the device alone


def test_codex_custom_tool_round_trip(stack: tuple[RunningGateway, SimServer],
                                      workdir: Path) -> None:
    gw, sim = stack
    key = gw.create_key("codex-dev", "pro")
    before = len(sim.stats.bodies)
    done = run_codex(gw, key, workdir, "List the files. [sim-tool: exec ls]")
    assert done.returncode == 0, done.stdout[-500:] + done.stderr[-500:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    [usage] = [e["usage"] for e in events if e["type"] == "turn.completed"]
    bodies = [b for r, b in list(sim.stats.bodies)[before:] if r == "responses"]
    assert len(bodies) == 2
    assert bodies[0]["input"][0]["type"] == "additional_tools"
    assert [i.get("type") for i in bodies[1]["input"][-3:]] == [
        "reasoning", "custom_tool_call", "custom_tool_call_output"]
    rows = rows_of(gw, "codex-dev")
    assert len(rows) == 2 and all(r.outcome == Outcome.OK and r.exact for r in rows)
    assert sum(r.input_tokens for r in rows) == usage["input_tokens"]
    assert sum(r.cached_tokens for r in rows) == usage["cached_input_tokens"] > 0
    assert sum(r.output_tokens for r in rows) == usage["output_tokens"]
    assert sum(r.reasoning_tokens for r in rows) == usage["reasoning_output_tokens"] > 0


def test_far_refusal_ends_both_clis_at_once(stack: tuple[RunningGateway, SimServer],
                                            workdir: Path) -> None:
    gw, _ = stack
    claude_key = gw.create_key("claude-poor", "claude-day")
    assert run_claude(gw, claude_key, workdir, "hi").returncode == 0
    started = time.monotonic()
    refused = run_claude(gw, claude_key, workdir, "hi again")
    took = time.monotonic() - started
    assert refused.returncode != 0 and took < 5  # the CLI's own start-up included
    assert "daily token limit of user 'claude-poor'" in refused.stdout + refused.stderr
    assert "will not clear soon" in refused.stdout + refused.stderr
    assert len([r for r in rows_of(gw, "claude-poor") if r.outcome == Outcome.REJECTED]) == 1

    codex_key = gw.create_key("codex-poor", "codex-day")
    assert run_codex(gw, codex_key, workdir, "hi").returncode == 0
    started = time.monotonic()
    refused = run_codex(gw, codex_key, workdir, "hi again")
    took = time.monotonic() - started
    assert refused.returncode != 0 and took < 5
    # Codex prints its own text for an insufficient_quota error, not the server's.
    assert "Quota exceeded" in refused.stdout
    assert len([r for r in rows_of(gw, "codex-poor") if r.outcome == Outcome.REJECTED]) == 1
