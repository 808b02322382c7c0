"""The disk fills up under a running gateway (owner-mode SQLite state, SQLite ledger):
calls get 429 `store_unavailable` in the protocol's format, never a plain 500; once the
disk takes writes again the gateway answers by itself, and every row reaches the ledger.

"Full" is the process's file-size limit lowered from outside (prlimit(2)): every write
past it fails with EFBIG, as a full disk fails with ENOSPC — the same OSError paths."""

from __future__ import annotations

import resource
import signal
import sqlite3
from pathlib import Path

import orjson

from tallygate.sim import SimServer
from tests.support.gateway import http
from tests.support.procs import serveable_policy, start_gateway, stop
from tests.support.waiting import eventually

HELLO = [{"role": "user", "content": "Hello"}]


def _call(url: str, key: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    status, _, raw = http("POST", url + "/v1/chat/completions",
                          orjson.dumps({"model": "gpt-4o-mini", "messages": HELLO,
                                        "max_tokens": 10}),
                          {"content-type": "application/json",
                           "authorization": f"Bearer {key}", "x-tallygate-feature": "chat"})
    return status, orjson.loads(raw)


def test_disk_full_is_a_429_and_the_gateway_heals_itself(sim: SimServer,
                                                         tmp_path: Path) -> None:
    policy, key = serveable_policy(tmp_path, sim, "2s")
    url, proc = start_gateway(policy)
    try:
        assert [_call(url, key)[0] for _ in range(3)] == [200, 200, 200]
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))
        full = [_call(url, key) for _ in range(5)]
        assert {status for status, _ in full} == {429}
        assert all(body["error"]["code"] == "store_unavailable" for _, body in full)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        eventually(lambda: _call(url, key)[0] == 200, timeout=15)  # healed, no restart
        assert _call(url, key)[0] == 200
    finally:
        stop(proc, signal.SIGTERM)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "Traceback" not in out, out
    db = sqlite3.connect(str(tmp_path / "l.db"))
    statuses = [s for (s,) in db.execute("SELECT status FROM calls ORDER BY ts")]
    assert statuses[:3] == [200, 200, 200] and statuses.count(429) >= 5
    assert statuses[-2:] == [200, 200]
