"""Fault injection on the simulated provider: retries with back-off, the client's own
retry count, context-length recovery — each visible on the ledger row, with budgets
consistent afterwards."""

from __future__ import annotations

import openai
import pytest

from tallygate.types import Outcome
from tests.support.resilience import (
    HELLO,
    client,
    detail,
    failing_chat,
    fast_retries,
    limits,
    nothing_held,
    post,
    retrying_gateway,
    rows_when,
)

# The upstream transport is exercised here: run on both (tests/support/fixtures.py).
BOTH_TRANSPORTS = True


@pytest.mark.parametrize("fault", ["429:0.002", "500", "529"])
def test_transient_fault_is_retried(make_gateway, sim, fault: str) -> None:
    gw = make_gateway()
    waits: list[float] = []
    fast_retries(gw, waits)
    key = gw.create_key("u", "pro")
    sim.push_faults(fault)
    reply = client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert reply.choices[0].message.content
    [row] = gw.rows()
    assert row.outcome == Outcome.OK and row.retries == 1
    [attempt] = detail(row)["attempts"]
    assert attempt["status"] == int(fault.split(":", maxsplit=1)[0])
    if fault.startswith("429"):
        assert waits == [pytest.approx(0.002)]  # retry-after-ms honoured, not the back-off
    else:
        assert 0 <= waits[0] <= 0.001  # full jitter within the first ceiling
    assert nothing_held(gw, key)


def test_timeout_is_retried(make_gateway, sim, tmp_path) -> None:
    gw, key = retrying_gateway(make_gateway, providers={
        "openai": {"protocol": "openai", "base_url": f"{sim.url}/v1", "api_key": "k",
                   "timeout": "300ms"}})
    sim.push_faults("timeout:2")
    client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    [row] = gw.rows()
    assert row.retries == 1 and detail(row)["attempts"][0]["timeout"] is True


def test_retries_exhausted_pass_the_error_through_at_no_cost(make_gateway, sim) -> None:
    gw, key = retrying_gateway(make_gateway, "free")
    # The first try and the feature's 2 retries.
    assert failing_chat(gw, key, sim, "500", "500", "500") == 3
    [row] = gw.rows()
    assert row.outcome == Outcome.ERROR and row.retries == 2 and row.cost_nusd == 0
    assert [a["status"] for a in detail(row)["attempts"]] == [500, 500, 500]
    usage = limits(gw, key)["user:u:tokens:day"]
    assert usage["used"] == 0 and usage["reserved"] == 0


def test_feature_retry_budget_bounds_the_tries(make_gateway, sim) -> None:
    features = {"chat": {"max_output": 50, "model": "gpt-4o-mini", "retries": 0}}
    gw, key = retrying_gateway(make_gateway, features=features)
    sim.push_faults("529")
    status, _, _ = post(gw, key, {"model": "gpt-4o-mini", "messages": HELLO},
                        **{"X-Tallygate-Feature": "chat"})
    assert status == 529
    sim.clear_faults()


def test_client_already_retrying_is_not_retried_inside(make_gateway, sim) -> None:
    gw, key = retrying_gateway(make_gateway)
    before = sim.stats.total
    sim.push_faults("500")
    status, _, _ = post(gw, key, {"model": "gpt-4o-mini", "messages": HELLO},
                        **{"x-stainless-retry-count": "1"})
    assert status == 500 and sim.stats.total - before == 1
    [row] = gw.rows()
    assert row.retries == 0 and detail(row)["client_retrying"] is True


def test_retry_after_beyond_the_client_deadline_is_not_waited(make_gateway, sim) -> None:
    gw, key = retrying_gateway(make_gateway)
    sim.push_faults("429:5")
    status, headers, _ = post(gw, key, {"model": "gpt-4o-mini", "messages": HELLO},
                              **{"x-stainless-timeout": "1"})
    assert status == 429 and headers["retry-after-ms"] == "5000"
    [row] = gw.rows()
    assert row.retries == 0 and row.cost_nusd == 0


def test_context_length_halves_the_output_cap(make_gateway, sim) -> None:
    gw, key = retrying_gateway(make_gateway)
    sim.push_faults("context_length_exceeded")
    client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=80)
    assert sim.stats.last_body("chat/completions")["max_tokens"] == 40
    [row] = gw.rows()
    assert row.retries == 1 and detail(row)["halved"] == [{"from": 80, "to": 40}]
    assert nothing_held(gw, key)


def test_context_length_then_trims_when_the_feature_allows(make_gateway, sim) -> None:
    gw, key = retrying_gateway(make_gateway)  # chat: on_exceed trim
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 20}
             for i in range(9)]
    sim.push_faults("context_length_exceeded", "context_length_exceeded")
    client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=turns, max_tokens=80)
    sent = sim.stats.last_body("chat/completions")
    assert len(sent["messages"]) < len(turns) and sent["max_tokens"] == 40
    [row] = gw.rows()
    info = detail(row)
    assert row.retries == 2 and row.outcome == Outcome.TRIMMED
    assert info["trimmed_on_retry"][0]["to"] < info["trimmed_on_retry"][0]["from"]


def test_context_length_with_reject_does_not_trim(make_gateway, sim) -> None:
    gw, key = retrying_gateway(make_gateway)
    sim.push_faults("context_length_exceeded", "context_length_exceeded")
    with pytest.raises(openai.BadRequestError):
        client(gw, key, feature="summarize").chat.completions.create(
            model="gpt-4o-mini", messages=HELLO)
    [row] = gw.rows()
    assert row.outcome == Outcome.ERROR and "on_exceed is reject" in detail(row)["recovery"]
    assert row.cost_nusd == 0 and nothing_held(gw, key)


def test_a_started_stream_is_never_retried(make_gateway, sim) -> None:
    gw, key = retrying_gateway(make_gateway)
    before = sim.stats.total
    sim.push_faults("cut:3")
    # The client already got the first chunks: the stream ends, it is not replayed.
    try:
        for _ in client(gw, key).chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True):
            pass
    except openai.APIError:
        pass
    assert sim.stats.total - before == 1
    [row] = rows_when(gw, 1)
    assert row.retries == 0 and row.outcome == Outcome.ERROR
    assert row.error_code == "upstream_stream_error"
    assert nothing_held(gw, key)


def test_a_stream_refused_before_its_first_byte_is_retried(make_gateway, sim) -> None:
    gw, key = retrying_gateway(make_gateway)
    sim.push_faults("500")
    chunks = list(client(gw, key).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True))
    assert chunks
    [row] = rows_when(gw, 1)
    assert row.retries == 1 and row.outcome == Outcome.OK


def test_anthropic_prompt_too_long_halves_then_trims(make_gateway, sim) -> None:
    """Anthropic's "prompt is too long" (400 invalid_request_error) is recognised as a
    context-length error: the output cap is halved, then old turns are trimmed."""
    import anthropic

    gw, key = retrying_gateway(make_gateway)  # chat: on_exceed trim
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 20}
             for i in range(9)]
    sim.push_faults("context_length_exceeded", "context_length_exceeded")
    ant = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0,
                              default_headers={"X-Tallygate-Feature": "chat"})
    answer = ant.messages.create(model="claude-haiku-4-5", max_tokens=80, messages=turns)
    assert answer.usage.output_tokens > 0
    sent = sim.stats.last_body("messages")
    assert len(sent["messages"]) < len(turns) and sent["max_tokens"] == 40
    assert sent["messages"][-1] == turns[-1]  # the newest turn is kept
    [row] = gw.rows()
    info = detail(row)
    assert row.retries == 2 and row.outcome == Outcome.TRIMMED
    assert info["halved"] == [{"from": 80, "to": 40}]
    assert info["trimmed_on_retry"][0]["to"] < info["trimmed_on_retry"][0]["from"]
    assert nothing_held(gw, key)
