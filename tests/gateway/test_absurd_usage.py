"""An upstream that answers 200 but reports an impossible usage (2**63 input tokens, the
simulator's `absurd_usage` fault): the client gets a 502 in its protocol's own error
format, the call has its row, nothing stays held, and the next call is served."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tallygate.sim import SimServer
from tallygate.types import Outcome
from tests.support.gateway import RunningGateway, http
from tests.support.resilience import HELLO, limits

ROUTES = {
    "openai": ("/v1/chat/completions", "chat",
               {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 30}),
    "anthropic": ("/v1/messages", "claude",
                  {"model": "claude-haiku-4-5", "messages": HELLO, "max_tokens": 30}),
}


def _post(gw: RunningGateway, key: str, protocol: str) -> tuple[int, dict[str, str], Any]:
    path, feature, body = ROUTES[protocol]
    headers = {"content-type": "application/json", "x-tallygate-feature": feature,
               **({"authorization": f"Bearer {key}"} if protocol == "openai"
                  else {"x-api-key": key, "anthropic-version": "2023-06-01"})}
    status, got, raw = http("POST", gw.url + path, orjson.dumps(body), headers)
    return status, got, orjson.loads(raw)


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_an_absurd_upstream_usage_is_a_502_in_the_protocols_format(
        make_gateway, sim: SimServer, protocol: str) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway()
    key = gw.create_key("eve", "pro")
    before = sim.stats.faults["absurd_usage"]
    sim.push_faults("absurd_usage")
    status, got, body = _post(gw, key, protocol)
    assert status == 502, body
    if protocol == "openai":
        assert set(body) == {"error"} and body["error"]["code"] == "upstream_invalid_usage"
        assert body["error"]["type"] and body["error"]["message"]
    else:
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
        assert "usage" in body["error"]["message"]
    assert got["x-tallygate-request-id"]
    assert sim.stats.faults["absurd_usage"] == before + 1
    [row] = gw.rows()
    assert row.request_id == got["x-tallygate-request-id"]
    assert (row.status, row.error_code, row.outcome) == (502, "upstream_invalid_usage",
                                                         Outcome.ERROR)
    assert row.input_tokens < 10_000  # the hold was charged, never the reported 2**63
    day = limits(gw, key)["user:eve:tokens:day"]
    assert day["reserved"] == 0 and day["used"] == row.input_tokens + row.output_tokens
    status, _, body = _post(gw, key, protocol)
    assert status == 200, body
    assert len(gw.rows()) == 2
