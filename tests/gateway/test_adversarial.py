"""The gateway tried as an attacker would: a shared or guessed request id, values past
every bound, deep nesting. Provider truth never passes the plan, nobody else is charged,
every refusal is a protocol error whose id is its row's, and the ledger keeps writing."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from tallygate.types import Outcome
from tests.support.gateway import RunningGateway, http
from tests.support.resilience import HELLO, limits

TINY = {"tiny": {"tokens_per_day": 300}, "nano": {"tokens_per_day": 20},
        "pro": {"tokens_per_day": 1_000_000}}


def _post(gw: RunningGateway, key: str, body: Any, path: str = "/v1/chat/completions",
          **headers: str) -> tuple[int, dict[str, str], Any]:
    hdrs = {"content-type": "application/json", "authorization": f"Bearer {key}",
            "x-tallygate-feature": "chat", **headers}
    # json, not orjson: orjson refuses to write past 254 levels, and the test must.
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, got, out = http("POST", gw.url + path, raw, hdrs)
    return status, got, orjson.loads(out)


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 30, **extra}


def test_twenty_calls_sharing_a_client_id_cannot_share_a_reservation(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(plans=TINY)
    key = gw.create_key("mallory", "tiny")
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(
            lambda _: _post(gw, key, _chat(), **{"X-Tallygate-Request-Id": "same-1"}),
            range(20)))
    served = [body for status, _, body in results if status == 200]
    refused = [body for status, _, body in results if status == 429]
    assert len(served) + len(refused) == 20 and served and refused
    truth = sum(b["usage"]["total_tokens"] for b in served)
    assert truth <= 300
    rows = gw.rows()
    ok = [r for r in rows if r.outcome is Outcome.OK]
    assert len(ok) == len(served)  # one row per admitted call
    assert sum(r.input_tokens + r.output_tokens for r in ok) == truth
    assert {r.client_request_id for r in rows} == {"same-1"}
    assert len({r.request_id for r in rows}) == 20
    ids = {got["x-tallygate-request-id"] for _, got, _ in results}
    assert len(ids) == 20 and {r.request_id for r in rows} == ids
    day = limits(gw, key)["user:mallory:tokens:day"]
    assert (day["used"], day["reserved"]) == (truth, 0)


def test_a_guessed_or_reused_id_charges_nobody_else(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(plans=TINY)
    alice, bob = gw.create_key("alice", "pro"), gw.create_key("bob", "pro")
    status, got, first = _post(gw, alice, _chat())
    assert status == 200
    seen = got["x-tallygate-request-id"]
    guess = seen[:-1] + ("0" if seen[-1] != "0" else "1")
    for forged in (seen, guess):
        status, got, _ = _post(gw, bob, _chat(), **{"X-Tallygate-Request-Id": forged})
        assert status == 200 and got["x-tallygate-request-id"] not in (seen, guess)
        assert got["x-tallygate-client-request-id"] == forged
    status, _, _ = _post(gw, alice, _chat())
    assert status == 200  # alice's calls still work
    rows = gw.rows()
    assert [r.user for r in rows] == ["alice", "bob", "bob", "alice"]
    assert rows[0].request_id == seen and rows[0].input_tokens == first["usage"]["prompt_tokens"]
    alice_used = limits(gw, alice)["user:alice:tokens:day"]["used"]
    assert alice_used == sum(r.input_tokens + r.output_tokens for r in rows if r.user == "alice")


@pytest.mark.parametrize("attempt", ["10000000000000000000", "100000000000000000000", "-2"])
def test_an_absurd_attempt_is_a_400_and_the_ledger_keeps_writing(gateway, attempt) -> None:  # type: ignore[no-untyped-def]
    key = gateway.create_key("eve", "pro")
    status, got, body = _post(gateway, key, _chat(), **{"X-Tallygate-Attempt": attempt})
    assert status == 400 and body["error"]["param"] == "X-Tallygate-Attempt"
    assert body["error"]["code"] == "invalid_request"
    status, _, _ = _post(gateway, key, _chat(), **{"X-Tallygate-Attempt": "3"})
    assert status == 200
    refused, ok = gateway.rows()
    assert refused.request_id == got["x-tallygate-request-id"]
    assert (refused.outcome, refused.step_attempt) == (Outcome.REJECTED, None)
    assert ok.step_attempt == 3 and ok.outcome is Outcome.OK


def _deep(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"x": node}}
    return node


@pytest.mark.parametrize("where", ["tools", "extra"])
def test_a_body_nested_300_deep_is_a_400_with_a_row(gateway, where) -> None:  # type: ignore[no-untyped-def]
    key = gateway.create_key("eve", "pro")
    extra = ({"tools": [{"type": "function", "function": {"name": "f",
                                                          "parameters": _deep(300)}}]}
             if where == "tools" else {"metadata_blob": _deep(300)})
    status, got, body = _post(gateway, key, _chat(**extra))
    assert status == 400 and "nests deeper" in body["error"]["message"]
    [row] = gateway.rows()
    assert row.request_id == got["x-tallygate-request-id"] and row.outcome is Outcome.REJECTED
    assert limits(gateway, key)["user:eve:tokens:day"]["reserved"] == 0


def test_names_past_256_characters_are_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    key = gateway.create_key("eve", "pro")
    for header in ("X-Tallygate-Run", "X-Tallygate-Step", "X-Tallygate-Feature"):
        status, _, body = _post(gateway, key, _chat(), **{header: "r" * 257})
        assert status == 400 and body["error"]["param"] == header
    status, _, body = _post(gateway, key, _chat(), **{"X-Tallygate-Request-Id": "x" * 129})
    assert status == 400


def test_a_refusals_response_carries_its_rows_id(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(plans=TINY, flags={"claude": False})
    key = gw.create_key("eve", "nano")
    answers = [
        _post(gw, key, _chat()),  # over the plan: 429
        _post(gw, key, {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": HELLO},
              path="/v1/messages", **{"x-tallygate-feature": "claude"}),  # switched off
        _post(gw, key, b"{nope"),  # malformed
    ]
    assert [status for status, _, _ in answers] == [429, 403, 400]
    rows = {r.request_id: r for r in gw.rows()}
    for status, got, _ in answers:
        assert rows[got["x-tallygate-request-id"]].status == status
    assert answers[1][2]["type"] == "error"  # the Anthropic route answers in its format
