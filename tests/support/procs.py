"""Gateway (and simulator) processes for multi-replica and crash tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.support.servers import free_port


def write_policy(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode}: {out[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy in {timeout}s")


def start_gateway(
    config: Path, *, env: dict[str, str] | None = None, workers: int = 1,
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    # Run beside the policy: its relative paths (sqlite:///tallygate.db) land there, not in
    # the checkout.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tallygate", "serve", "--config", str(config), "--port", str(port),
         "--workers", str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        cwd=config.parent,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return url, proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def gateways(config: Path, count: int) -> Iterator[Sequence[str]]:
    started: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for _ in range(count):
            url, proc = start_gateway(config)
            started.append(proc)
            urls.append(url)
        yield urls
    finally:
        for proc in started:
            stop(proc)


def serveable_policy(tmp: Path, sim: Any, deadline: str) -> tuple[Path, str]:
    """A policy file for `serve` on the simulator (SQLite state and ledger in `tmp`, a
    `pro` plan, the shutdown deadline), and the secret of a key on it."""
    policy = write_policy(tmp / "tallygate.yaml", {
        "storage": {"state": f"sqlite:///{tmp}/state.db", "ledger": f"sqlite:///{tmp}/l.db"},
        "providers": {"openai": {"protocol": "openai", "base_url": f"{sim.url}/v1",
                                 "api_key": "sk-sim"}},
        "features": {"chat": {"max_output": 400, "model": "gpt-4o-mini"}},
        "plans": {"pro": {"tokens_per_day": 1_000_000}},
        "server": {"shutdown_deadline": deadline},
    })
    made = subprocess.run(
        [sys.executable, "-m", "tallygate", "keys", "create", "--config", str(policy),
         "--user", "streamer", "--plan", "pro", "--json"],
        capture_output=True, text=True, check=True, timeout=60)
    return policy, json.loads(made.stdout)["key"]
