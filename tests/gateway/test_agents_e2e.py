"""Recorded request shapes of Claude Code and Codex CLI (tests/data/agents, built from what
the CLIs send) driven through the gateway to the simulator: each passes unchanged, and the
ledger row equals the usage the provider reported — cache writes, cache reads and
reasoning/thinking tokens included — turn after turn of a tool round trip."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tallygate.providers.common import parse_event
from tallygate.providers.sessions import agent_attribution
from tallygate.types import Outcome
from tests.support.gateway import ADMIN_KEY, RunningGateway, http
from tests.support.policies import FEATURES

# The upstream transport is exercised here: run on both (tests/support/fixtures.py).
BOTH_TRANSPORTS = True

DATA = Path(__file__).resolve().parents[1] / "data" / "agents"
# No feature cap on the default feature: the agents' own max_tokens go through.
AGENT_FEATURES = {**FEATURES, "default": {}, "capped": {"max_output": 16000}}


def fixture(name: str) -> dict[str, Any]:
    return orjson.loads((DATA / f"{name}.json").read_bytes())


@pytest.fixture
def gw(make_gateway: Callable[..., RunningGateway]) -> Iterator[RunningGateway]:
    yield make_gateway(features=AGENT_FEATURES)


def events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for part in raw.split(b"\n\n"):
        event = parse_event(part + b"\n\n")
        if event.data and event.data.startswith("{"):
            out.append(orjson.loads(event.data))
    return out


def send(gw: RunningGateway, shape: dict[str, Any], body: dict[str, Any], key: str,
         auth: str, **extra: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    headers = {**shape["headers"], "content-type": "application/json", auth: key, **extra}
    if auth == "authorization":
        headers[auth] = f"Bearer {key}"
    status, out_headers, raw = http("POST", gw.url + shape["path"], orjson.dumps(body), headers)
    assert status == 200, raw[:500]
    return out_headers, events(raw)


def row_of(gw: RunningGateway, headers: dict[str, str]) -> Any:
    wanted = headers["x-tallygate-request-id"]
    [row] = [r for r in gw.rows() if r.request_id == wanted]
    assert row.outcome == Outcome.OK and row.exact and row.stream
    return row


# --------------------------------------------------------------------------- Anthropic


def anthropic_usage(stream: list[dict[str, Any]]) -> dict[str, int]:
    """The provider's usage as the client reads it: message_start, then the cumulative
    message_delta (assigned, not added)."""
    usage = dict(stream[0]["message"]["usage"])
    for event in stream:
        if event["type"] == "message_delta":
            usage.update(event["usage"])
    return usage


def anthropic_content(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The assistant's content blocks rebuilt from the stream, as Claude Code keeps them."""
    blocks: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for event in stream:
        if event["type"] == "content_block_start":
            blocks.append(dict(event["content_block"]))
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                partial[event["index"]] = partial.get(event["index"], "") + delta["partial_json"]
    for index, text in partial.items():
        blocks[index]["input"] = orjson.loads(text)
    return blocks


def assert_row_is_anthropic_usage(row: Any, usage: dict[str, int]) -> None:
    read, written = usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]
    assert row.input_tokens == usage["input_tokens"] + written + read
    assert (row.cached_tokens, row.cache_write_tokens) == (read, written)
    assert row.output_tokens == usage["output_tokens"]
    thinking = usage.get("output_tokens_details", {}).get("thinking_tokens", 0)
    assert row.reasoning_tokens == thinking


def test_claude_code_default_model_passes_and_is_accounted(gw: RunningGateway, sim) -> None:
    shape = fixture("claude_code_default")
    key = gw.create_key("dev", "pro")
    headers, stream = send(gw, shape, shape["body"], key, "x-api-key")
    sent = sim.stats.last_body("messages")
    assert sent == shape["body"]  # a mid-conversation system turn, betas' fields: as sent
    assert [m["role"] for m in sent["messages"]] == ["user", "system"]
    usage = anthropic_usage(stream)
    # Written on the first run, read on the next (the simulator outlives one gateway).
    assert usage["cache_creation_input_tokens"] + usage["cache_read_input_tokens"] > 0
    row = row_of(gw, headers)
    assert_row_is_anthropic_usage(row, usage)
    assert row.model_used == "claude-opus-5-5" and row.feature == "default"
    # The end user is Claude Code's device, not the metadata blob with its session in it.
    assert orjson.loads(row.detail)["end_user"] == orjson.loads(
        shape["body"]["metadata"]["user_id"])["device_id"]
    # No X-Tallygate-Run: Claude Code's own session is the run (providers/sessions.py).
    assert row.run == shape["headers"]["x-claude-code-session-id"]
    assert agent_attribution(shape["headers"], shape["body"]).run == row.run
    # `?beta=true` and the betas reach the provider as sent.
    assert sim.stats.queries[-1] == "beta=true"
    assert sim.stats.headers[-1]["anthropic-beta"] == shape["headers"]["anthropic-beta"]


def test_a_claude_code_session_is_a_run_in_the_reports(gw: RunningGateway, sim) -> None:
    """Two turns of one Claude Code session and one malformed request, no tallygate
    header set: the session's report, and the refusal in the usage report."""
    shape = fixture("claude_code_tool_round_trip")
    key = gw.create_key("dev", "pro")
    session = shape["headers"]["x-claude-code-session-id"]
    send(gw, shape, shape["body"], key, "authorization")
    send(gw, shape, shape["body"], key, "authorization")
    bad = {**shape["headers"], "content-type": "application/json", "x-api-key": key}
    status, _, _ = http("POST", gw.url + "/v1/messages", b'{"model": 5}', bad)
    assert status == 400
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    status, _, raw = http("GET", gw.url + f"/admin/reports/runs?run={session}", headers=admin)
    assert status == 200
    [run] = orjson.loads(raw)["runs"]
    assert run["run"] == session and run["calls"] == 3  # the refused one included
    status, _, raw = http("GET", gw.url + "/admin/reports?by=run", headers=admin)
    rows = {r["key"]: r for r in orjson.loads(raw)["rows"]}
    assert rows[session]["calls"] == 3 and rows[session]["rejected"] == 1
    refused = [r for r in gw.rows() if r.outcome is Outcome.REJECTED]
    assert len(refused) == 1 and refused[0].status == 400 and refused[0].run == session
    assert rows[session]["total_tokens"] > 0


def test_claude_code_tool_round_trip(gw: RunningGateway, sim) -> None:
    shape = fixture("claude_code_tool_round_trip")
    key = gw.create_key("dev", "pro")
    body = copy.deepcopy(shape["body"])
    headers1, stream1 = send(gw, shape, body, key, "authorization")
    content = anthropic_content(stream1)
    assert [b["type"] for b in content] == ["thinking", "tool_use"]
    assert stream1[-2]["delta"]["stop_reason"] == "tool_use"
    tool_use = content[1]
    assert tool_use["name"] == "Read" and tool_use["input"]["file_path"].endswith("README.md")
    body["messages"] += [
        {"role": "assistant", "content": content},
        {"role": "user", "content": [{**shape["tool_result"], "tool_use_id": tool_use["id"]}]}]
    headers2, stream2 = send(gw, shape, body, key, "authorization")
    assert [b["type"] for b in anthropic_content(stream2)] == ["thinking", "text"]
    sent = sim.stats.last_body("messages")
    assert sent["messages"][1]["content"][1]["type"] == "tool_use"  # the history, as sent
    first, second = anthropic_usage(stream1), anthropic_usage(stream2)
    assert second["cache_read_input_tokens"] > 0  # turn 1's prefix, read back
    assert_row_is_anthropic_usage(row_of(gw, headers1), first)
    assert_row_is_anthropic_usage(row_of(gw, headers2), second)
    assert row_of(gw, headers2).reasoning_tokens > 0


def test_lowered_cap_lowers_thinking_budget(gw: RunningGateway, sim) -> None:
    """Under a 16,000-token feature cap, Claude Code's 31,999-token thinking budget is
    kept with the interleaved-thinking beta it sends, and lowered without it."""
    shape = fixture("claude_code_tool_round_trip")
    key = gw.create_key("dev", "pro")
    send(gw, shape, shape["body"], key, "x-api-key", **{"x-tallygate-feature": "capped"})
    sent = sim.stats.last_body("messages")
    assert sent["max_tokens"] == 16000 and sent["thinking"]["budget_tokens"] == 31999
    plain = {**shape, "headers": {k: v for k, v in shape["headers"].items()
                                  if k != "anthropic-beta"}}
    send(gw, plain, shape["body"], key, "x-api-key", **{"x-tallygate-feature": "capped"})
    sent = sim.stats.last_body("messages")
    assert sent["max_tokens"] == 16000
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 15999}


def test_thinking_that_cannot_fit_is_a_clear_400(make_gateway) -> None:
    gw = make_gateway(features={**AGENT_FEATURES, "tiny": {"max_output": 1000}})
    shape = fixture("claude_code_tool_round_trip")
    key = gw.create_key("dev", "pro")
    headers = {**shape["headers"], "content-type": "application/json", "x-api-key": key,
               "x-tallygate-feature": "tiny"}
    status, _, raw = http("POST", gw.url + shape["path"], orjson.dumps(shape["body"]), headers)
    assert status == 400
    err = orjson.loads(raw)["error"]
    assert err["type"] == "invalid_request_error"
    assert "max_output of feature 'tiny' (1000 tokens)" in err["message"]
    assert "thinking.budget_tokens >= 1024" in err["message"]


# --------------------------------------------------------------------------- Codex


def responses_final(stream: list[dict[str, Any]]) -> dict[str, Any]:
    assert stream[-1]["type"] == "response.completed"
    return stream[-1]["response"]


def assert_row_is_responses_usage(row: Any, usage: dict[str, Any]) -> None:
    assert row.input_tokens == usage["input_tokens"]
    assert row.cached_tokens == usage["input_tokens_details"]["cached_tokens"]
    assert row.output_tokens == usage["output_tokens"]
    assert row.reasoning_tokens == usage["output_tokens_details"]["reasoning_tokens"]


def test_codex_custom_tool_round_trip(gw: RunningGateway, sim) -> None:
    shape = fixture("codex_round_trip")
    key = gw.create_key("dev", "pro")
    body = copy.deepcopy(shape["body"])
    headers1, stream1 = send(gw, shape, body, key, "authorization")
    sent = sim.stats.last_body("responses")
    assert sent["input"] == shape["body"]["input"]  # additional_tools, developer turns
    assert sent["max_output_tokens"] == 8192  # tallygate's cap: the model's output limit
    first = responses_final(stream1)
    assert [item["type"] for item in first["output"]] == ["reasoning", "custom_tool_call"]
    call = first["output"][1]
    assert (call["name"], call["input"]) == ("exec", "ls -la")
    assert first["output"][0]["encrypted_content"]
    types = {e["type"] for e in stream1}
    assert {"response.custom_tool_call_input.delta", "response.output_item.done"} <= types
    body["input"] += [*first["output"], {**shape["tool_output"], "call_id": call["call_id"]}]
    headers2, stream2 = send(gw, shape, body, key, "authorization")
    second = responses_final(stream2)
    assert [item["type"] for item in second["output"]] == ["reasoning", "message"]
    assert second["usage"]["input_tokens_details"]["cached_tokens"] >= 1024  # prompt_cache_key
    assert_row_is_responses_usage(row_of(gw, headers1), first["usage"])
    assert_row_is_responses_usage(row_of(gw, headers2), second["usage"])
    assert row_of(gw, headers1).reasoning_tokens > 0
    # Codex's session is the run of every turn the gateway recorded.
    assert row_of(gw, headers1).run == row_of(gw, headers2).run == shape["headers"]["session-id"]


def test_codex_thread_id_names_the_run_when_no_session_id_is_sent(gw: RunningGateway) -> None:
    shape = fixture("codex_round_trip")
    key = gw.create_key("dev", "pro")
    only_thread = {**shape, "headers": {k: v for k, v in shape["headers"].items()
                                        if k != "session-id"}}
    only_thread["headers"]["thread-id"] = "thread-7"
    headers1, _ = send(gw, only_thread, shape["body"], key, "authorization")
    both = {**shape, "headers": {**shape["headers"], "session-id": "session-7",
                                 "thread-id": "thread-8"}}
    headers2, _ = send(gw, both, shape["body"], key, "authorization")
    headers3, _ = send(gw, both, shape["body"], key, "authorization",
                       **{"x-tallygate-run": "ci-run-1"})
    assert row_of(gw, headers1).run == "thread-7"
    assert row_of(gw, headers2).run == "session-7"  # the session outranks the thread
    assert row_of(gw, headers3).run == "ci-run-1"  # and an explicit run outranks both
    assert agent_attribution(both["headers"], shape["body"]).run == "session-7"
