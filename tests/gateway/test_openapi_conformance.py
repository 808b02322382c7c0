"""What the gateway itself answers on OpenAI routes validates against the official
OpenAI OpenAPI description: its own error bodies (every SPEC §4 case reachable without
faults), and the bodies and stream chunks it relays or rewrites."""

from __future__ import annotations

import orjson

from tests.conformance.test_openapi import check
from tests.support.gateway import RunningGateway, http

HELLO = [{"role": "user", "content": "Hello"}]


def _post(gw: RunningGateway, body: object, key: str | None, **headers: str) -> tuple[int, bytes]:
    hdrs = {"content-type": "application/json", **headers}
    if key:
        hdrs["authorization"] = f"Bearer {key}"
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    status, _, out = http("POST", gw.url + "/v1/chat/completions", raw, hdrs)
    return status, out


def test_gateway_error_bodies_validate(gateway: RunningGateway) -> None:
    key = gateway.create_key("conf", "free", features=("chat", "summarize"))
    cases = [
        _post(gateway, b"{nope", key, **{"X-Tallygate-Feature": "chat"}),  # invalid_request
        _post(gateway, {"model": "gpt-4o-mini", "messages": HELLO}, "tg-unknown"),  # 401
        _post(gateway, {"model": "gpt-4o-mini", "messages": HELLO}, key,
              **{"X-Tallygate-Feature": "claude"}),  # permission_denied
        _post(gateway, {"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "word " * 200}]}, key,
            **{"X-Tallygate-Feature": "summarize"}),  # input_budget_exceeded
        _post(gateway, {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 5000}, key,
              **{"X-Tallygate-Feature": "chat", "X-Tallygate-Attempt": "x"}),  # bad header
    ]
    statuses = [status for status, _ in cases]
    assert statuses == [400, 401, 403, 400, 400]
    for _, body in cases:
        check("ErrorResponse", orjson.loads(body))


def test_gateway_budget_error_validates(make_gateway) -> None:
    gw = make_gateway(plans={"free": {"tokens_per_day": 10}})
    key = gw.create_key("tiny", "free")
    status, body = _post(gw, {"model": "gpt-4o-mini", "messages": HELLO}, key,
                         **{"X-Tallygate-Feature": "chat"})
    assert status == 429
    check("ErrorResponse", orjson.loads(body))


def test_relayed_bodies_validate(gateway: RunningGateway) -> None:
    key = gateway.create_key("conf2", "pro")
    status, body = _post(gateway, {"model": "gpt-4o-mini", "messages": HELLO,
                                   "max_tokens": 5000}, key, **{"X-Tallygate-Feature": "chat"})
    assert status == 200
    check("CreateChatCompletionResponse", orjson.loads(body))
    status, raw = _post(gateway, {"model": "gpt-4o-mini", "messages": HELLO, "stream": True},
                        key, **{"X-Tallygate-Feature": "chat"})
    assert status == 200
    chunks = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]"
    for chunk in chunks[:-1]:
        check("CreateChatCompletionStreamResponse", orjson.loads(chunk))
