"""Every SPEC §4 error case: the documented status, code and format, the SDK raising the
matching exception, and bad input answered with a 4xx — never a 500."""

from __future__ import annotations

import anthropic
import openai
import orjson
import pytest

from tallygate.types import Outcome
from tests.support.gateway import ADMIN_KEY, RunningGateway, http
from tests.support.resilience import fast_retries
from tests.support.waiting import eventually

# The upstream transport is exercised here: run on both (tests/support/fixtures.py).
BOTH_TRANSPORTS = True

CHAT = {"X-Tallygate-Feature": "chat"}
HELLO = [{"role": "user", "content": "Hello"}]


def _oa(gw: RunningGateway, key: str, retries: int = 0, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=retries,
                         default_headers={**CHAT, **headers})


def _post(gw: RunningGateway, path: str, body: bytes, key: str | None,
          **headers: str) -> tuple[int, dict[str, str], dict]:
    hdrs = {"content-type": "application/json", **headers}
    if key:
        hdrs["authorization"] = f"Bearer {key}"
    status, out_headers, raw = http("POST", gw.url + path, body, hdrs)
    return status, out_headers, orjson.loads(raw)


def _assert_openai_error(body: dict, code: str) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code


def test_input_budget_exceeded(gateway: RunningGateway) -> None:
    key = gateway.create_key("u", "pro")
    client = _oa(gateway, key, **{"X-Tallygate-Feature": "summarize"})
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "word " * 200}])
    assert info.value.code == "input_budget_exceeded"
    assert "summarize" in info.value.message and "50" in info.value.message
    [row] = gateway.rows()
    assert row.outcome == Outcome.REJECTED and row.error_code == "input_budget_exceeded"


def test_exhausted_daily_budget_raises_at_once(gateway: RunningGateway, sim) -> None:
    key = gateway.create_key("poor", "free")  # 2,000 tokens a day
    # The SDK would retry a plain 429 twice; each call uses ~108 of the 2,000 tokens.
    client = _oa(gateway, key, retries=2)
    sim.config.reply_tokens = 100
    before = sim.stats.total
    for _ in range(40):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        except openai.RateLimitError as exc:
            error = exc
            break
    else:
        pytest.fail("the free plan never ran out")
    sim.config.reply_tokens = 16
    assert error.code == "budget_exceeded" and error.type == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in error.response.headers  # the reset is hours away
    assert "h" in error.response.headers["x-ratelimit-reset-tokens"]
    assert "will not clear soon" in error.message
    rejected = [r for r in gateway.rows() if r.outcome == Outcome.REJECTED]
    assert len(rejected) == 1  # no silent SDK retries
    spent = sum(r.input_tokens + r.output_tokens for r in gateway.rows())
    assert spent <= 2000
    assert sim.stats.total - before == len(gateway.rows()) - 1  # the refusal never left


def test_rate_limited_per_minute_is_retryable(make_gateway) -> None:
    gw = make_gateway(limits={"user": {"requests_per_minute": 1}})
    key = gw.create_key("fast", "pro")
    client = _oa(gw, key)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert info.value.code == "rate_limited"
    headers = info.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert "x-should-retry" not in headers


def test_feature_disabled_at_run_time(gateway: RunningGateway) -> None:
    key = gateway.create_key("u", "pro")
    rt = gateway.gateway.runtime
    assert rt is not None
    gateway.call(rt.store.set_flag, "chat", False)  # as another replica would

    def refused() -> openai.PermissionDeniedError | None:
        try:
            _oa(gateway, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        except openai.PermissionDeniedError as exc:
            return exc
        return None

    # The flag view polls the store (every 0.5 s): refused within a second.
    assert eventually(refused, timeout=1.5).code == "feature_disabled"


def test_invalid_and_revoked_keys(gateway: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        _oa(gateway, "tg-not-a-key").chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert info.value.code == "invalid_api_key"
    assert "tg-not-a-key" not in info.value.message
    with pytest.raises(anthropic.AuthenticationError) as ainfo:
        anthropic.Anthropic(base_url=gateway.url, api_key="tg-nope", max_retries=0).messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=HELLO)
    assert ainfo.value.body["error"]["type"] == "authentication_error"


def test_permission_denied_feature_and_model(gateway: RunningGateway) -> None:
    key = gateway.create_key("u", "pro", features=("chat",), models=("gpt-4o-mini",))
    with pytest.raises(openai.PermissionDeniedError) as info:
        _oa(gateway, key, **{"X-Tallygate-Feature": "summarize"}).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO)
    assert info.value.code == "permission_denied"
    with pytest.raises(openai.PermissionDeniedError) as info:
        _oa(gateway, key).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert info.value.code == "permission_denied"


BAD_BODIES = [
    (b"{not json", 400, "invalid_request"),
    (b'{"model": 5, "messages": []}', 400, "invalid_request"),
    (b'{"model": "gpt-4o-mini"}', 400, "invalid_request"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], '
     b'"max_tokens": -3}', 400, "invalid_request"),
    (b'{"model": "gpt-4o-mini", "messages": "hi"}', 400, "invalid_request"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400,
     "invalid_request"),
    (b'[1, 2, 3]', 400, "invalid_request"),
    (b'{"model": "no-such-model-xyz", "messages": [{"role": "user", "content": "x"}]}', 400,
     "model_not_found"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
def test_bad_input_openai(gateway: RunningGateway, body: bytes, status: int, code: str) -> None:
    key = gateway.create_key("u", "pro")
    got, _, out = _post(gateway, "/v1/chat/completions", body, key, **CHAT)
    assert got == status
    _assert_openai_error(out, code)


def test_bad_input_anthropic_format(gateway: RunningGateway) -> None:
    key = gateway.create_key("u", "pro")
    got, _, out = _post(gateway, "/v1/messages", b'{"model": "claude-haiku-4-5"}', key)
    assert got == 400
    assert out["type"] == "error" and out["error"]["type"] == "invalid_request_error"


def test_body_over_cap_is_413(gateway: RunningGateway) -> None:
    key = gateway.create_key("u", "pro")
    big = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + (
        b"a" * (50 * 1024 * 1024)) + b'"}]}'
    got, _, out = _post(gateway, "/v1/chat/completions", big, key)
    assert got == 413
    _assert_openai_error(out, "request_too_large")


def test_unknown_model_suggests_names(gateway: RunningGateway) -> None:
    key = gateway.create_key("u", "pro")
    with pytest.raises(openai.BadRequestError) as info:
        _oa(gateway, key).chat.completions.create(model="gpt-4o-mimi", messages=HELLO)
    assert "gpt-4o-mini" in info.value.message


def test_upstream_error_passes_through_and_costs_nothing(gateway: RunningGateway, sim) -> None:
    key = gateway.create_key("u", "free")
    fast_retries(gateway)
    sim.push_faults("500", "500", "500")  # the first try and both retries fail
    with pytest.raises(openai.InternalServerError):
        _oa(gateway, key).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO)
    [row] = gateway.rows()
    assert row.outcome == Outcome.ERROR and row.status == 500 and row.cost_nusd == 0
    _, _, body = http("GET", gateway.url + "/v1/usage",
                           headers={"Authorization": f"Bearer {key}"})
    limits = {item["key"]: item for item in orjson.loads(body)["limits"]}
    assert limits["user:u:tokens:day"]["used"] == 0
    assert limits["user:u:tokens:day"]["reserved"] == 0


def test_admin_requires_admin_key(gateway: RunningGateway) -> None:
    status, _, _ = http("GET", gateway.url + "/admin/keys")
    assert status == 401
    status, _, body = http("GET", gateway.url + "/admin/keys",
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert status == 200 and isinstance(orjson.loads(body)["data"], list)
