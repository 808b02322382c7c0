"""Hot reload: SIGHUP or POST /admin/reload swaps in a changed policy for the next call;
a broken file keeps the running policy; a replica on the same Redis follows within a
few seconds; storage and server changes are refused (they need a restart)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from tallygate.sim import SimServer
from tests.support.cli import tallygate
from tests.support.gateway import http
from tests.support.procs import start_gateway, stop, write_policy
from tests.support.waiting import eventually

ADMIN = "reload-admin-key"
HELLO = [{"role": "user", "content": "Hello"}]


def _policy(tmp: Path, sim: SimServer, state: str, day: int) -> dict[str, Any]:
    return {
        "storage": {"state": state, "ledger": f"sqlite:///{tmp}/l.db"},
        "providers": {"openai": {"protocol": "openai", "base_url": f"{sim.url}/v1",
                                 "api_key": "sk-sim"}},
        "features": {"chat": {"max_output": 20, "model": "gpt-4o-mini"}},
        "plans": {"pro": {"tokens_per_day": day}},
    }


def _key(policy: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tallygate", "keys", "create", "--config", str(policy),
         "--user", "u", "--plan", "pro", "--json"],
        capture_output=True, text=True, check=True, timeout=60)
    return str(orjson.loads(out.stdout)["key"])


def _call(url: str, key: str) -> int:
    return http("POST", url + "/v1/chat/completions",
                orjson.dumps({"model": "gpt-4o-mini", "messages": HELLO}),
                {"content-type": "application/json", "authorization": f"Bearer {key}",
                 "x-tallygate-feature": "chat"})[0]


def test_sighup_takes_a_changed_limit_and_keeps_a_broken_file_out(
        sim: SimServer, tmp_path: Path) -> None:
    path = tmp_path / "tallygate.yaml"
    state = f"sqlite:///{tmp_path}/s.db"
    write_policy(path, _policy(tmp_path, sim, state, 1_000_000))
    key = _key(path)
    url, proc = start_gateway(path, env={"TALLYGATE_ADMIN_KEY": ADMIN})
    try:
        assert _call(url, key) == 200
        write_policy(path, _policy(tmp_path, sim, state, 10))  # a much smaller plan
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: _call(url, key) == 429)  # the next calls: the new limit
        path.write_text("features: {chat: [unclosed\n")  # broken
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None and _call(url, key) == 429  # still the last good one
        write_policy(path, _policy(tmp_path, sim, state, 1_000_000))
        done = tallygate("reload", "--url", url, cwd=tmp_path, env={"TALLYGATE_ADMIN_KEY": ADMIN})
        assert done.returncode == 0 and orjson.loads(done.stdout)["reloaded"] is True, done
        assert _call(url, key) == 200  # the limit kept its counter; the plan grew
        moved = _policy(tmp_path, sim, f"sqlite:///{tmp_path}/elsewhere.db", 1_000_000)
        write_policy(path, moved)
        status, _, raw = http("POST", url + "/admin/reload",
                              headers={"Authorization": f"Bearer {ADMIN}"})
        assert status == 400 and b"restart to apply" in raw
        done = tallygate("reload", "--url", url, cwd=tmp_path, env={"TALLYGATE_ADMIN_KEY": ADMIN})
        assert done.returncode != 0 and done.stdout == ""
        assert done.stderr.startswith("tallygate: error: gateway answered 400: ")
        assert "restart to apply" in done.stderr and len(done.stderr.splitlines()) == 1
    finally:
        stop(proc)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "policy not reloaded" in out and "Traceback" not in out
    assert "info: policy reloaded from" in out  # a success is not a warning


def test_reload_without_a_url_is_one_line(tmp_path: Path) -> None:
    done = tallygate("reload", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("tallygate: error: reload: ")
    assert len(done.stderr.splitlines()) == 1


def test_a_replica_on_the_same_redis_follows_a_reload(
        sim: SimServer, tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "tallygate.yaml"
    state = redis_url.replace("/0", "/5")
    write_policy(path, _policy(tmp_path, sim, state, 1_000_000))
    key = _key(path)
    env = {"TALLYGATE_ADMIN_KEY": ADMIN}
    url_a, proc_a = start_gateway(path, env=env)
    url_b, proc_b = start_gateway(path, env=env)
    try:
        assert _call(url_a, key) == 200 and _call(url_b, key) == 200
        write_policy(path, _policy(tmp_path, sim, state, 10))
        status, _, _ = http("POST", url_a + "/admin/reload",
                            headers={"Authorization": f"Bearer {ADMIN}"})
        assert status == 200
        assert _call(url_a, key) == 429
        eventually(lambda: _call(url_b, key) == 429, timeout=5.0)  # within a few seconds
    finally:
        stop(proc_a)
        stop(proc_b)
