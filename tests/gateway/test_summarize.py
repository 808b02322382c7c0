"""on_exceed: summarize — the oldest turns replaced by a summary from the configured
model, made as a call of its own (own reservation and row), cached by the turns' hash."""

from __future__ import annotations

from tallygate.types import Outcome
from tests.support.resilience import client, detail, fast_retries, nothing_held

FEATURES = {
    "chat": {"max_input": 150, "max_output": 50, "model": "gpt-4o-mini",
             "on_exceed": "summarize", "summarize_model": "gpt-4.1-mini"},
}


def _conversation() -> list[dict[str, str]]:
    turns = [{"role": "system", "content": "You are terse."}]
    for i in range(10):
        role = "user" if i % 2 == 0 else "assistant"
        turns.append({"role": role, "content": f"message number {i} " + "about the plan " * 6})
    turns.append({"role": "user", "content": "So what now?"})
    return turns


def test_oldest_turns_become_a_summary(make_gateway, sim) -> None:
    gw = make_gateway(features=FEATURES)
    fast_retries(gw)
    key = gw.create_key("u", "pro")
    before = sim.stats.count(model="gpt-4.1-mini")
    client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=_conversation())
    assert sim.stats.count(model="gpt-4.1-mini") - before == 1
    sent = sim.stats.last_body("chat/completions")
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"][0]["content"] == "You are terse."
    assert sent["messages"][1]["content"].startswith("Summary of the earlier conversation: ")
    assert sent["messages"][-1]["content"] == "So what now?"
    rows = {r.feature: r for r in gw.rows()}
    summary, main = rows["chat:summarize"], rows["chat"]
    assert summary.model_used == "gpt-4.1-mini" and summary.outcome == Outcome.OK
    assert summary.output_tokens > 0 and summary.cost_nusd > 0
    info = detail(main)
    assert main.outcome == Outcome.TRIMMED and info["summarized"]["turns"] >= 2
    assert info["summarized"]["to"] <= 150 and main.input_tokens <= 150
    assert nothing_held(gw, key)


def test_the_summary_is_cached_by_the_turns(make_gateway, sim) -> None:
    gw = make_gateway(features=FEATURES)
    fast_retries(gw)
    key = gw.create_key("u", "pro")
    oa = client(gw, key)
    oa.chat.completions.create(model="gpt-4o-mini", messages=_conversation())
    before = sim.stats.count(model="gpt-4.1-mini")
    oa.chat.completions.create(model="gpt-4o-mini", messages=_conversation())
    assert sim.stats.count(model="gpt-4.1-mini") == before  # not summarised again
    rows = [r for r in gw.rows() if r.feature == "chat"]
    assert any(detail(r).get("summary_cache") == "hit" for r in rows)
