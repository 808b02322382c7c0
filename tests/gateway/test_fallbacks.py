"""Fallback models: tried after the primary fails its retries, or when its limit has
no room (`on_limit: fallback`); the reservation moves to the model actually used."""

from __future__ import annotations

import time

import openai
import pytest

from tallygate.types import Outcome, Window
from tests.support.resilience import HELLO, client, detail, failing_chat, limits, retrying_gateway

# The upstream transport is exercised here: run on both (tests/support/fixtures.py).
BOTH_TRANSPORTS = True

FALLBACK = {"chat": {"max_output": 50, "model": "gpt-4o-mini", "retries": 1,
                     "fallbacks": ["claude-haiku-4-5", "gpt-4.1-mini"]}}


def test_primary_failing_after_retries_falls_back(make_gateway, sim) -> None:
    gw, key = retrying_gateway(make_gateway, features=FALLBACK)
    sim.push_faults("500", "503")
    reply = client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert reply.model == "gpt-4.1-mini"
    [row] = gw.rows()
    info = detail(row)
    assert row.outcome == Outcome.OK and row.model_used == "gpt-4.1-mini"
    assert row.model_requested == "gpt-4o-mini" and row.retries == 2
    moved = {"from": "gpt-4o-mini", "to": "gpt-4.1-mini", "reason": "upstream 503"}
    assert info["fallback"] == [moved]
    assert "anthropic" in info["fallback_skipped"][0]["claude-haiku-4-5"]  # other protocol
    assert all(item["reserved"] == 0 for item in limits(gw, key).values())


def test_every_model_failing_costs_nothing(make_gateway, sim) -> None:
    gw, key = retrying_gateway(make_gateway, "free", features=FALLBACK)
    # One retry budget for the call: primary, its retry, then the fallback's one try.
    assert failing_chat(gw, key, sim, "500", "500", "500") == 3
    [row] = gw.rows()
    assert row.outcome == Outcome.ERROR and row.cost_nusd == 0 and row.retries == 2
    assert row.model_used == "gpt-4.1-mini"
    usage = limits(gw, key)
    assert all(item["reserved"] == 0 and item["used"] == 0 for item in usage.values())


def test_on_limit_fallback_moves_the_reservation(make_gateway) -> None:
    features = {"chat": {**FALLBACK["chat"], "on_limit": "fallback"}}
    gw, key = retrying_gateway(make_gateway, features=features,
                      limits={"model": {"gpt-4o-mini": {"requests_per_minute": 1}}})
    first = client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    second = client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert first.model == "gpt-4o-mini" and second.model == "gpt-4.1-mini"
    rows = sorted(gw.rows(), key=lambda r: r.ts)
    assert [r.model_used for r in rows] == ["gpt-4o-mini", "gpt-4.1-mini"]
    assert detail(rows[1])["fallback"][0]["reason"] == "rate_limited"
    store = gw.gateway.runtime.store
    for model, used in (("gpt-4o-mini", 1), ("gpt-4.1-mini", 0)):
        got = gw.call(store.usage, f"model:{model}:requests:minute", limit=1,
                      window=Window.MINUTE, now=time.time())
        assert (got.used, got.reserved) == (used, 0)  # the refused hold was not kept
    usage = limits(gw, key)
    assert all(item["reserved"] == 0 for item in usage.values())


def test_on_limit_reject_stays_a_429(make_gateway) -> None:
    gw = make_gateway(features=FALLBACK,
                      limits={"model": {"gpt-4o-mini": {"requests_per_minute": 1}}})
    key = gw.create_key("u", "pro")
    client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    with pytest.raises(openai.RateLimitError):
        client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)


def test_fallback_respects_the_keys_model_allow_list(make_gateway, sim) -> None:
    # No fallback allowed.
    gw, key = retrying_gateway(make_gateway, models=("gpt-4o-mini",), features=FALLBACK)
    sim.push_faults("500", "500")
    with pytest.raises(openai.InternalServerError):
        client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    [row] = gw.rows()
    assert row.model_used == "gpt-4o-mini"
    assert detail(row)["fallback_refused"] == [{"gpt-4.1-mini": "permission_denied"}]
    assert all(item["reserved"] == 0 for item in limits(gw, key).values())


def test_a_call_policy_changed_says_so_in_its_headers(make_gateway, sim) -> None:  # type: ignore[no-untyped-def]
    chat = {**FALLBACK["chat"], "max_input": 4000, "on_exceed": "trim"}
    gw, key = retrying_gateway(make_gateway, features={"chat": chat})
    sim.push_faults("500", "503")
    raw = client(gw, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO)
    assert raw.headers["x-tallygate-routed-model"] == "gpt-4.1-mini"
    assert "x-tallygate-trimmed" not in raw.headers
    long = [{"role": "user", "content": f"turn {i} " + "word " * 400} for i in range(12)]
    trimmed = client(gw, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=long)
    removed = int(trimmed.headers["x-tallygate-trimmed"])
    assert removed > 0 and gw.rows()[-1].trimmed_tokens == removed
    plain = client(gw, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO)
    assert "x-tallygate-routed-model" not in plain.headers
