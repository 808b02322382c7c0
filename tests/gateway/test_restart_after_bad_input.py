"""`tallygate serve` restarted after the inputs that once poisoned its ledger: attempt
headers of 10^19 and 10^20, a body nested 300 deep, an upstream reporting 2**63 input
tokens. Stopped cleanly or killed, the gateway starts again on the same ledger and
journal, keeps every row and serves the next call."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tallygate.sim import SimServer
from tests.support.gateway import ADMIN_KEY, http, running_sim
from tests.support.procs import serveable_policy, start_gateway, stop

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 20}


@pytest.fixture(scope="module")
def fast_sim() -> Iterator[SimServer]:
    with running_sim() as (server, _):
        yield server


def _deep(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"x": node}}
    return node


def _post(url: str, key: str, body: dict[str, Any], **headers: str) -> tuple[int, str]:
    # json, not orjson: orjson refuses to write past 254 levels, and the test must.
    status, got, _ = http("POST", url + "/v1/chat/completions", json.dumps(body).encode(),
                          {"content-type": "application/json",
                           "authorization": f"Bearer {key}",
                           "x-tallygate-feature": "chat", **headers})
    return status, got["x-tallygate-request-id"]


def _rows(policy: Path) -> dict[str, tuple[int, str | None]]:
    db = sqlite3.connect(str(policy.parent / "l.db"))
    try:
        return {r[0]: (r[1], r[2])
                for r in db.execute("SELECT request_id, status, error_code FROM calls")}
    finally:
        db.close()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_the_gateway_restarts_after_poisonous_inputs(fast_sim: SimServer, tmp_path: Path,
                                                     how: signal.Signals) -> None:
    policy, key = serveable_policy(tmp_path, fast_sim, "1s")
    policy.write_text(policy.read_text() + f"admin_key: {ADMIN_KEY}\n")
    url, proc = start_gateway(policy)
    sent: dict[str, int] = {}
    try:
        for attempt in ("10000000000000000000", "100000000000000000000"):
            status, rid = _post(url, key, CHAT, **{"X-Tallygate-Attempt": attempt})
            sent[rid] = status
        deep = {**CHAT, "tools": [{"type": "function",
                                   "function": {"name": "f", "parameters": _deep(300)}}]}
        status, rid = _post(url, key, deep)
        sent[rid] = status
        fast_sim.push_faults("absurd_usage")
        status, rid = _post(url, key, CHAT)
        sent[rid] = status
        status, rid = _post(url, key, CHAT)
        sent[rid] = status
    finally:
        stop(proc, how)
    assert list(sent.values()) == [400, 400, 400, 502, 200]
    url, proc = start_gateway(policy)  # replays the journal the first process left
    try:
        status, rid = _post(url, key, CHAT)
        assert status == 200
        sent[rid] = status
        code, _, raw = http("GET", url + "/admin/reports?by=user",
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert code == 200, raw
        report = {r["key"]: r for r in json.loads(raw)["rows"]}
        assert report["streamer"]["calls"] == len(sent)  # it reads every row, the poison too
    finally:
        stop(proc)
    rows = _rows(policy)
    assert {rid: status for rid, (status, _) in rows.items()} == sent  # every row, once
    assert sorted(code for _, code in rows.values() if code) == [
        "invalid_request", "invalid_request", "invalid_request", "upstream_invalid_usage"]
