"""The shared state store is unreachable: `fail_closed` refuses with 429
store_unavailable (nothing admitted unchecked), `fail_open` admits and counts locally."""

from __future__ import annotations

import openai
import pytest

from tests.support.gateway import RunningGateway
from tests.support.servers import free_port

HELLO = [{"role": "user", "content": "Hello"}]


def _client(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                         default_headers={"X-Tallygate-Feature": "chat"})


def _dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def test_fail_closed_refuses_with_store_unavailable(make_gateway, tmp_path) -> None:
    gw = make_gateway(storage={"state": _dead_redis(), "ledger": f"sqlite:///{tmp_path}/l.db",
                               "fail_mode": "fail_closed"})
    key = gw.create_key("u", "pro")
    with pytest.raises(openai.RateLimitError) as info:
        _client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert info.value.code == "store_unavailable"
    assert info.value.response.headers["retry-after"] == "1"
    [row] = gw.rows()
    assert row.error_code == "store_unavailable"


def test_fail_open_admits_and_counts_locally(make_gateway, tmp_path, sim) -> None:
    gw = make_gateway(storage={"state": _dead_redis(), "ledger": f"sqlite:///{tmp_path}/l.db",
                               "fail_mode": "fail_open"})
    key = gw.create_key("u", "free")
    before = sim.stats.total
    reply = _client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert reply.usage.total_tokens > 0
    assert sim.stats.total == before + 1
    [row] = gw.rows()
    assert row.outcome.value == "ok"
