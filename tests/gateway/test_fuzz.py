"""Hypothesis throws arbitrary JSON (and arbitrary bytes) at every route: the gateway
answers in the protocol's format with a status below 500, never a crash."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gateway import RunningGateway, http

ROUTES = ["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/messages",
          "/v1/messages/count_tokens"]

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(
    allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20,
)
# Bodies shaped like real requests, with every field possibly wrong.
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "bogus"]) | json_values,
     "content": st.text(max_size=60) | json_values})
plausible = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o-mini", "claude-haiku-4-5", "text-embedding-3-small",
                               "tier:small", "auto", ""]) | json_values},
    optional={
        "messages": st.lists(message, max_size=4) | json_values,
        "input": st.text(max_size=40) | json_values,
        "max_tokens": st.integers(-5, 10**9) | json_values,
        "max_completion_tokens": st.integers(-5, 10**9) | json_values,
        "n": st.integers(-2, 200) | json_values,
        "stream": st.booleans() | json_values,
        "tools": json_values,
        "system": json_values,
        "stream_options": json_values,
    },
)

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _check(status: int, raw: bytes, route: str) -> None:
    assert status < 500, (status, raw[:300])
    body: Any = orjson.loads(raw)
    if status >= 400:
        if route.startswith("/v1/messages"):
            assert body["type"] == "error" and body["error"]["message"]
        else:
            assert body["error"]["message"] and "code" in body["error"]


@FUZZ
@given(route=st.sampled_from(ROUTES), body=plausible)
def test_plausible_bodies_never_500(gateway: RunningGateway, route: str, body: dict) -> None:
    key = _key(gateway)
    status, _, raw = http("POST", gateway.url + route, json.dumps(body).encode(),
                          {"authorization": f"Bearer {key}", "content-type": "application/json",
                           "X-Tallygate-Feature": "chat"})
    if body.get("stream") is True and status == 200:
        return  # an SSE stream, not a JSON body
    _check(status, raw, route)


@FUZZ
@given(route=st.sampled_from(ROUTES), raw_body=st.binary(max_size=200) | json_values.map(
    lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_never_500(gateway: RunningGateway, route: str, raw_body: bytes) -> None:
    key = _key(gateway)
    status, _, raw = http("POST", gateway.url + route, raw_body,
                          {"authorization": f"Bearer {key}", "content-type": "application/json"})
    _check(status, raw, route)


_KEYS: dict[int, str] = {}


def _key(gateway: RunningGateway) -> str:
    if id(gateway) not in _KEYS:
        _KEYS[id(gateway)] = gateway.create_key("fuzz", "pro")
    return _KEYS[id(gateway)]
