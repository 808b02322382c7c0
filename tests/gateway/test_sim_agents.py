"""The simulator speaks what coding agents need, checked with the official anthropic SDK:
thinking blocks and tool_use round trips (streamed with the exact event sequence, and
not), prompt-cache writes then reads, thinking counted inside max_tokens, the final 429."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import orjson
import pytest

from tallygate.providers.common import parse_event
from tallygate.sim import SimServer
from tests.support.gateway import http, running_sim

READ = {"name": "Read", "description": "Read a file.",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                         "required": ["file_path"]}}
SYSTEM = [{"type": "text", "text": "You are a coding agent. " * 40,
           "cache_control": {"type": "ephemeral"}}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with running_sim() as (server, _):
        yield server


def _client(sim: SimServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="sk-sim", max_retries=0)


def _ask(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def test_thinking_then_tool_use_then_text(sim: SimServer) -> None:
    client = _client(sim)
    thinking = {"type": "enabled", "budget_tokens": 2000}
    first = client.messages.create(
        model="claude-opus-5-5", max_tokens=4000, thinking=thinking, tools=[READ],
        messages=_ask('Look. [sim-tool: Read {"file_path": "README.md"}]'))
    kinds = [b.type for b in first.content]
    assert kinds == ["thinking", "tool_use"] and first.stop_reason == "tool_use"
    call = first.content[1]
    assert (call.name, call.input) == ("Read", {"file_path": "README.md"})
    assert first.content[0].signature and first.content[0].thinking
    assert first.usage.output_tokens_details.thinking_tokens == 8  # (sim default)
    follow = [*_ask('Look. [sim-tool: Read {"file_path": "README.md"}]'),
              {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                for b in first.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                            "content": "# tallygate"}]}]
    second = client.messages.create(model="claude-opus-5-5", max_tokens=4000,
                                    thinking=thinking, tools=[READ], messages=follow)
    assert [b.type for b in second.content] == ["thinking", "text"]
    assert second.stop_reason == "end_turn"


def test_stream_event_sequence(sim: SimServer) -> None:
    body = {"model": "claude-opus-5-5", "max_tokens": 4000, "stream": True,
            "thinking": {"type": "adaptive", "display": "omitted"}, "tools": [READ],
            "messages": _ask("[sim-tool: Read]")}
    status, _, raw = http("POST", sim.url + "/v1/messages", orjson.dumps(body),
                          {"content-type": "application/json"})
    assert status == 200
    events = [parse_event(part + b"\n\n") for part in raw.split(b"\n\n") if part.strip()]
    seq = []
    for ev in events:
        data = orjson.loads(ev.data or "{}")
        assert data["type"] == ev.event
        delta = data.get("delta", {}).get("type") if ev.event == "content_block_delta" else None
        block = data.get("content_block", {}).get("type")
        seq.append(delta or block or ev.event)
    assert seq[:4] == ["message_start", "thinking", "ping", "signature_delta"]
    # display: omitted → no thinking text, only its signature
    assert seq[4:6] == ["content_block_stop", "tool_use"]
    assert set(seq[6:-3]) == {"input_json_delta"}
    assert seq[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    with _client(sim).messages.stream(**{k: v for k, v in body.items() if k != "stream"}
                                      ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].input == {"file_path": "sim"}  # filled from the schema


def test_prompt_cache_writes_then_reads(sim: SimServer) -> None:
    client = _client(sim)
    turn1 = client.messages.create(model="claude-haiku-4-5", max_tokens=64, system=SYSTEM,
                                   messages=_ask("first"))
    assert turn1.usage.cache_creation_input_tokens > 0
    assert turn1.usage.cache_read_input_tokens == 0
    turn2 = client.messages.create(model="claude-haiku-4-5", max_tokens=64, system=SYSTEM,
                                   messages=_ask("second"))
    assert turn2.usage.cache_read_input_tokens == turn1.usage.cache_creation_input_tokens
    assert turn2.usage.cache_creation_input_tokens == 0


def test_thinking_counts_inside_max_tokens(sim: SimServer) -> None:
    msg = _client(sim).messages.create(
        model="claude-opus-5-5", max_tokens=10, messages=_ask("hi"),
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_headers={"x-sim-reasoning-tokens": "6", "x-sim-reply-tokens": "30"})
    assert msg.usage.output_tokens == 10 and msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens_details.thinking_tokens == 6


def test_quota_fault_is_final(sim: SimServer) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        _client(sim).messages.create(model="claude-haiku-4-5", max_tokens=5,
                                     messages=_ask("hi"), extra_headers={"x-sim-fault": "quota"})
    assert info.value.body["error"]["details"]["error_code"] == "enforced_spend_limit_reached"
    assert "retry-after" not in info.value.response.headers
