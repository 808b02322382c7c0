"""The signed response cache on the gateway: hit, miss on any parameter change, TTL,
tampered entries, streamed replay accepted by the official SDKs, tokens saved."""

from __future__ import annotations

import anthropic
import openai
import orjson

from tallygate.types import Outcome
from tests.support.gateway import RunningGateway
from tests.support.resilience import HELLO, client, fast_retries, nothing_held, post

CACHE = {"hmac_key": "test-cache-signing-key-0123456789"}
ON = {"X-Tallygate-Cache": "on", "X-Tallygate-Feature": "chat"}


def _gw(make_gateway, **sections):
    gw = make_gateway(cache=CACHE, **sections)
    fast_retries(gw)
    return gw


def _ask(gw: RunningGateway, key: str, **extra: object) -> tuple[int, dict]:
    status, _, raw = post(gw, key, {"model": "gpt-4o-mini", "messages": HELLO, **extra}, **ON)
    return status, orjson.loads(raw)


def test_hit_costs_nothing_and_records_tokens_saved(make_gateway, sim) -> None:
    gw = _gw(make_gateway)
    key = gw.create_key("u", "free")
    before = sim.stats.total
    _, first = _ask(gw, key)
    _, second = _ask(gw, key, user="someone-else", metadata={"x": "y"}, stream=False)
    assert second == first and sim.stats.total - before == 1
    rows = sorted(gw.rows(), key=lambda r: r.ts)
    assert [r.outcome for r in rows] == [Outcome.OK, Outcome.CACHED]
    hit = rows[1]
    assert hit.cost_nusd == 0 and hit.input_tokens == hit.output_tokens == 0
    assert hit.tokens_saved == first["usage"]["total_tokens"] > 0
    assert nothing_held(gw, key)


def test_any_parameter_change_is_a_miss(make_gateway, sim) -> None:
    gw = _gw(make_gateway)
    key = gw.create_key("u", "pro")
    _ask(gw, key)
    changes = [{"temperature": 0.3}, {"top_p": 0.5}, {"seed": 7}, {"max_tokens": 9},
               {"stop": ["x"]}, {"messages": [{"role": "user", "content": "Hello!"}]},
               {"model": "gpt-4.1-mini"},
               {"response_format": {"type": "json_object"}},
               {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}]
    for change in changes:
        before = sim.stats.total
        _ask(gw, key, **change)
        assert sim.stats.total - before == 1, change


def test_off_by_default_and_per_feature(make_gateway, sim) -> None:
    features = {"faq": {"max_output": 50, "model": "gpt-4o-mini", "cache": True}}
    gw = _gw(make_gateway, features=features)
    key = gw.create_key("u", "pro")
    before = sim.stats.total
    for _ in range(2):
        post(gw, key, {"model": "gpt-4o-mini", "messages": HELLO})  # no opt-in: default
    for _ in range(2):
        post(gw, key, {"model": "gpt-4o-mini", "messages": HELLO}, **{"X-Tallygate-Feature": "faq"})
    assert sim.stats.total - before == 3


def test_ttl_expiry(make_gateway, sim) -> None:
    features = {"chat": {"max_output": 50, "model": "gpt-4o-mini", "cache_ttl": "10s"}}
    gw = _gw(make_gateway, features=features)
    now = [1_000.0]
    gw.gateway.runtime.cache.clock = lambda: now[0]
    key = gw.create_key("u", "pro")
    before = sim.stats.total
    _ask(gw, key)
    now[0] += 9
    _ask(gw, key)
    assert sim.stats.total - before == 1
    now[0] += 2  # 11 s after it was stored
    _ask(gw, key)
    assert sim.stats.total - before == 2


def test_tampered_entry_is_a_miss(make_gateway, sim) -> None:
    gw = _gw(make_gateway)
    key = gw.create_key("u", "pro")
    _ask(gw, key)
    cache = gw.gateway.runtime.cache
    [(entry_key, value)] = cache.backend.entries.items()
    # The upstream body is JSON text inside the signed JSON payload, hence the escapes.
    forged = value.replace(b'\\"content\\":\\"', b'\\"content\\":\\"FORGED ')
    assert forged != value
    cache.backend.entries[entry_key] = forged
    before = sim.stats.total
    status, body = _ask(gw, key)
    assert status == 200 and "FORGED" not in body["choices"][0]["message"]["content"]
    assert sim.stats.total - before == 1 and cache.tampered == 1


def test_no_hmac_key_means_no_cache(make_gateway, sim) -> None:
    gw = make_gateway()
    assert gw.gateway.runtime.cache is None
    key = gw.create_key("u", "pro")
    before = sim.stats.total
    _ask(gw, key)
    _ask(gw, key)
    assert sim.stats.total - before == 2


def test_streamed_replay_with_the_openai_sdk(make_gateway, sim) -> None:
    gw = _gw(make_gateway)
    key = gw.create_key("u", "pro")
    oa = client(gw, key, **{"X-Tallygate-Cache": "on"})
    answer = oa.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    before = sim.stats.total
    chunks = list(oa.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True,
                                             stream_options={"include_usage": True}))
    assert sim.stats.total == before
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].usage.total_tokens == answer.usage.total_tokens
    plain = list(oa.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    assert all(c.usage is None for c in plain)  # no usage chunk unless asked


def test_streamed_replay_with_the_anthropic_sdk(make_gateway, sim) -> None:
    gw = _gw(make_gateway)
    key = gw.create_key("u", "pro")
    ant = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0,
                              default_headers={"X-Tallygate-Cache": "on",
                                               "X-Tallygate-Feature": "claude"})
    answer = ant.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=HELLO)
    before = sim.stats.total
    with ant.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=HELLO) as stream:
        final = stream.get_final_message()
    assert sim.stats.total == before
    assert final.content[0].text == answer.content[0].text
    assert final.usage.output_tokens == answer.usage.output_tokens
    assert final.stop_reason == answer.stop_reason
    assert isinstance(openai, object)
