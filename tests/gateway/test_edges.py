"""The API's edges on a real gateway: unknown routes, wrong methods and non-JSON bodies
answer in the API's own error JSON; /v1/models lists what the key may call, in the
asking SDK's shape; /metrics behind its token; failed key checks throttled per address."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tallygate.sim import SimServer
from tests.support.gateway import ADMIN_KEY, RunningGateway, http, running_gateway, sim_policy
from tests.support.policies import FEATURES, PLANS
from tests.support.resilience import HELLO


@pytest.fixture
def gw(sim: SimServer, tmp_path: Any) -> Iterator[RunningGateway]:
    policy = sim_policy(sim.url, str(tmp_path), features=FEATURES, plans=PLANS,
                        metrics={"token": "metrics-token-1"},
                        server={"auth_failures_per_minute": 3})
    with running_gateway(policy) as running:
        yield running


def openai_error(status: int, raw: bytes, code: str) -> dict[str, Any]:
    error = orjson.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return dict(error)


def test_unknown_routes_wrong_methods_and_bodies_are_api_json(gw: RunningGateway) -> None:
    key = gw.create_key("u", "pro")
    auth = {"Authorization": f"Bearer {key}"}
    status, headers, raw = http("GET", gw.url + "/v1/nope", headers=auth)
    assert status == 404 and headers["content-type"] == "application/json"
    openai_error(status, raw, "not_found")

    status, headers, raw = http("GET", gw.url + "/v1/chat/completions", headers=auth)
    assert status == 405 and headers["allow"] == "POST"
    openai_error(status, raw, "method_not_allowed")
    status, headers, raw = http("POST", gw.url + "/v1/models", b"{}", auth)
    assert status == 405 and "GET" in headers["allow"]
    openai_error(status, raw, "method_not_allowed")

    status, _, raw = http("POST", gw.url + "/v1/chat/completions", b"model=gpt-4o",
                          {**auth, "content-type": "application/x-www-form-urlencoded"})
    assert status == 415
    openai_error(status, raw, "unsupported_media_type")

    for method, path in (("GET", "/v1/messages"), ("POST", "/v1/messages/batches/x"),
                         ("PUT", "/v1/messages/count_tokens")):
        status, headers, raw = http(method, gw.url + path, b"{}", {"x-api-key": key})
        body = orjson.loads(raw)
        assert status in (404, 405) and headers["content-type"] == "application/json"
        assert body["type"] == "error" and {"type", "message"} <= set(body["error"])


def test_models_lists_only_what_the_key_may_call(gw: RunningGateway) -> None:
    key = gw.create_key("u", "pro")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    for noise in ("tts-1", "whisper-1", "gpt-image-1", "gpt-4o-realtime-preview"):
        assert noise not in ids
    assert not [i for i in ids if ":" in i or "/" in i or i.startswith("claude")]

    narrow = gw.create_key("u", "pro", models=("gpt-4o*",))
    narrow_client = openai.OpenAI(base_url=gw.url + "/v1", api_key=narrow, max_retries=0)
    narrow_ids = [m.id for m in narrow_client.models.list()]
    assert narrow_ids and all(i.startswith("gpt-4o") for i in narrow_ids)

    claude = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
    claude_ids = [m.id for m in claude.models.list()]
    assert "claude-haiku-4-5" in claude_ids
    assert not [i for i in claude_ids if not i.startswith("claude") or ":" in i or "/" in i]


def test_metrics_needs_its_token(gw: RunningGateway) -> None:
    status, _, raw = http("GET", gw.url + "/metrics")
    assert status == 401
    openai_error(status, raw, "invalid_api_key")
    status, _, _ = http("GET", gw.url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert status == 401
    status, _, raw = http("GET", gw.url + "/metrics",
                                headers={"Authorization": "Bearer metrics-token-1"})
    assert status == 200 and b"tallygate_requests_total" in raw


def test_failed_key_checks_are_throttled_per_address(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    good = gw.create_key("u", "pro")
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": HELLO})

    def call(key: str) -> tuple[int, dict[str, str], bytes]:
        return http("POST", gw.url + "/v1/chat/completions", body,
                    {"Authorization": f"Bearer {key}", "content-type": "application/json"})

    assert call(good)[0] == 200
    caplog.set_level(logging.WARNING, logger="tallygate.auth")
    for i in range(4):
        status, _, raw = call(f"tg-guess-{i}")
        assert status == 401, raw
    status, headers, raw = call(good)  # the address is refused, whatever the key
    # Final, as every refusal retrying cannot clear soon: no Retry-After to sleep on.
    assert status == 429 and "retry-after" not in headers
    assert headers.get("x-should-retry") == "false"
    openai_error(status, raw, "auth_throttled")
    lines = [r.getMessage() for r in caplog.records if r.name == "tallygate.auth"]
    assert len(lines) == 1 and "127.0.0.1" in lines[0] and "4 failed key checks" in lines[0]


def test_admin_key_guesses_count_against_the_address(gw: RunningGateway) -> None:
    def keys(admin: str) -> int:
        return http("GET", gw.url + "/admin/keys", headers={"Authorization": f"Bearer {admin}"})[0]

    assert keys(ADMIN_KEY) == 200
    assert [keys(f"guess-{i}") for i in range(4)] == [401] * 4
    assert keys(ADMIN_KEY) == 429  # the right key too, until the minute ends
