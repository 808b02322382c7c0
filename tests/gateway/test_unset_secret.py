"""A provider key written as `${VAR}` with the variable unset: the gateway's first call
that needs it answers a server error in the protocol's own format naming the variable
(never a value), and no budget is spent."""

from __future__ import annotations

import orjson

from tallygate.config import Policy
from tallygate.sim import SimServer
from tests.support.gateway import ADMIN_KEY, http, running_gateway
from tests.support.policies import FEATURES, PLANS
from tests.support.resilience import HELLO


def test_first_call_names_the_missing_variable(sim: SimServer, tmp_path) -> None:
    policy = Policy.from_mapping({
        "storage": {"state": "memory://", "ledger": f"sqlite:///{tmp_path}/l.db"},
        "providers": {
            "openai": {"protocol": "openai", "base_url": f"{sim.url}/v1",
                       "api_key": "${TG_TEST_UNSET_OPENAI_KEY}"},
            "anthropic": {"protocol": "anthropic", "base_url": sim.url,
                          "api_key": "${TG_TEST_UNSET_ANTHROPIC_KEY}"},
        },
        "features": FEATURES, "plans": PLANS, "admin_key": ADMIN_KEY,
    }, "tallygate.yaml", env={})
    with running_gateway(policy) as gw:
        key = gw.create_key("u", "pro")
        status, _, raw = http("POST", gw.url + "/v1/chat/completions",
                              orjson.dumps({"model": "gpt-4o-mini", "messages": HELLO}),
                              {"Authorization": f"Bearer {key}",
                               "content-type": "application/json"})
        assert status == 500
        error = orjson.loads(raw)["error"]
        assert error["code"] == "secret_not_set" and error["type"] == "server_error"
        assert "TG_TEST_UNSET_OPENAI_KEY is not set" in error["message"]
        assert "providers.openai.api_key" in error["message"]
        status, _, raw = http("POST", gw.url + "/v1/messages", orjson.dumps(
            {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": HELLO}),
            {"x-api-key": key, "content-type": "application/json",
             "anthropic-version": "2023-06-01"})
        body = orjson.loads(raw)
        assert status == 500 and body["type"] == "error"
        assert "TG_TEST_UNSET_ANTHROPIC_KEY" in body["error"]["message"]
        assert [r.input_tokens + r.output_tokens for r in gw.rows()
                if r.outcome == "ok"] == []
