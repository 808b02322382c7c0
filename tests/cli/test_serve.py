"""`tallygate serve` and `tallygate sim` as an operator runs them (real processes on
loopback): bind first, one start-up block, one-line refusals with a non-zero exit,
and the access log of finished calls."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tallygate import __version__
from tallygate.sim import SimServer
from tests.support.gateway import running_sim
from tests.support.procs import stop, wait_healthy, write_policy
from tests.support.servers import free_port

ADMIN = "serve-test-admin-key"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with running_sim() as (server, _):
        yield server


def tallygate(*args: str, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tallygate", *args], check=False,
                          capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_line_refusal(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0, result.stdout
    err = result.stderr.strip()
    assert err.startswith("tallygate: error: ") and "\n" not in err, err
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in err, err
    return err


def policy_for(tmp_path: Path, sim: SimServer, **storage: str) -> Path:
    return write_policy(tmp_path / "tallygate.yaml", {
        "storage": {"state": "memory://", "ledger": f"sqlite:///{tmp_path}/ledger.db",
                    **storage},
        "providers": {"openai": {"protocol": "openai", "base_url": f"{sim.url}/v1",
                                 "api_key": "${TG_TEST_SIM_KEY}"}},
        "features": {"chat": {"max_output": 50}}, "plans": {"pro": {}},
    })


def test_start_up_block_then_calls_in_the_access_log(sim: SimServer, tmp_path: Path) -> None:
    config = policy_for(tmp_path, sim)
    log = tmp_path / "access.jsonl"
    port = free_port()
    env = {**os.environ, "TG_TEST_SIM_KEY": "sk-sim", "TALLYGATE_ADMIN_KEY": ADMIN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tallygate", "serve", "--config", str(config), "--port",
         str(port), "--access-log", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)  # type: ignore[arg-type]
        created = tallygate("keys", "create", "--user", "u1", "--plan", "pro", "--json",
                            "--url", url, env={"TALLYGATE_ADMIN_KEY": ADMIN})
        key = json.loads(created.stdout)["key"]
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0,
                               default_headers={"X-Tallygate-Feature": "chat",
                                                "X-Tallygate-Run": "T-1"})
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}])
        assert reply.choices[0].message.content
        tallygate("report", "--by", "feature", "--url", url, env={"TALLYGATE_ADMIN_KEY": ADMIN})
    finally:
        stop(proc)  # type: ignore[arg-type]
    out = proc.stdout.read() if proc.stdout else ""
    lines = out.splitlines()
    assert lines[0] == f"tallygate {__version__}"
    assert [line.split()[0] for line in lines[1:11]] == [
        "policy", "state", "warning", "ledger", "providers", "admin", "metrics", "defences",
        "access", "listening"]
    assert lines[3].split(None, 1)[1].startswith(  # the policy keeps its limits in memory://
        "memory://: the limits live in this process; a restart forgets")
    assert str(config) in out and f"sqlite:///{tmp_path}/ledger.db" in out
    assert "openai (openai, " in out and "admin API  on" in out
    assert f"listening  http://127.0.0.1:{port} (1 worker)" in out
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == {"time", "request_id", "key_id", "feature", "user", "run", "step",
                        "model", "status", "outcome", "input_tokens", "output_tokens",
                        "tokens", "cost_usd", "ms"}
    assert row["feature"] == "chat" and row["user"] == "u1" and row["run"] == "T-1"
    assert row["status"] == 200 and row["model"] == "gpt-4o-mini"
    assert row["tokens"] == reply.usage.total_tokens and row["time"].endswith("Z")
    assert key not in log.read_text() and "sk-sim" not in log.read_text() + out


def test_refusals_are_one_line(sim: SimServer, tmp_path: Path) -> None:
    config = policy_for(tmp_path, sim)
    env = {"TG_TEST_SIM_KEY": "sk-sim"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        one_line_refusal(tallygate("serve", "--config", str(config), "--port", port, env=env),
                         "cannot listen on 127.0.0.1:" + port, "in use")
        one_line_refusal(tallygate("sim", "--port", port), "cannot listen", "in use")
    os.environ.pop("TG_TEST_SIM_KEY", None)
    one_line_refusal(tallygate("serve", "--config", str(config), "--port", "0"),
                     "TG_TEST_SIM_KEY (providers.openai.api_key)")
    bad_url = policy_for(tmp_path, sim, state="redis://127.0.0.1:63x9/0")
    one_line_refusal(tallygate("serve", "--config", str(bad_url), env=env),
                     "storage.state", "port")
    down = policy_for(tmp_path, sim, ledger="postgresql://u:pw@127.0.0.1:1/db")
    result = tallygate("serve", "--config", str(down), "--port", "0", env=env)
    err = one_line_refusal(result, "cannot open ledger")
    assert "pw" not in err and "pw" not in result.stdout


def test_workers_get_the_defences(tmp_path: Path) -> None:
    """With --workers 2 the guarded protocol and its settings reach each worker process."""
    config = write_policy(tmp_path / "tallygate.yaml", {
        "storage": {"state": f"sqlite:///{tmp_path}/s.db", "ledger": f"sqlite:///{tmp_path}/l.db"},
        "server": {"header_timeout": 1},
    })
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tallygate", "serve", "--config", str(config), "--port",
         str(port), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            started = time.monotonic()
            assert silent.recv(100) == b""  # closed by the header deadline
            assert time.monotonic() - started < 1 + 2.0
    finally:
        stop(proc)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "(2 workers)" in out and "header 1 s" in out
