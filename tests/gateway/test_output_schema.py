"""A feature's output_schema is sent as the protocol's structured-output parameter when
the client did not set one."""

from __future__ import annotations

from tests.support.resilience import HELLO, client

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}},
          "required": ["answer"], "additionalProperties": False}
FEATURES = {"shaped": {"max_output": 50, "model": "gpt-4o-mini", "output_schema": SCHEMA}}


def test_schema_added_unless_the_client_set_one(make_gateway, sim) -> None:
    gw = make_gateway(features=FEATURES)
    key = gw.create_key("u", "pro")
    oa = client(gw, key, feature="shaped")
    oa.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    sent = sim.stats.last_body("chat/completions")["response_format"]
    assert sent == {"type": "json_schema",
                    "json_schema": {"name": "shaped", "schema": SCHEMA, "strict": True}}
    oa.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                               response_format={"type": "json_object"})
    assert sim.stats.last_body("chat/completions")["response_format"] == {"type": "json_object"}
