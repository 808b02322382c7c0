"""`serve --workers N` on a SQLite state file a running gateway owns refuses to start,
with one clear line, instead of answering /healthz and refusing every call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tallygate.sim import SimServer
from tests.support.procs import serveable_policy, start_gateway, stop
from tests.support.servers import free_port


def test_several_workers_refuse_a_file_another_gateway_owns(sim: SimServer,
                                                           tmp_path: Path) -> None:
    policy, _ = serveable_policy(tmp_path, sim, "1s")
    _, owner = start_gateway(policy)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "tallygate", "serve", "--config", str(policy),
             "--workers", "2", "--port", str(free_port())],
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        stop(owner)
    assert second.returncode == 2
    assert "owned by" in second.stderr and "Traceback" not in second.stderr
