"""Trimming a conversation: oldest first, system and newest kept, tool pairs whole."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tallygate.core.trim import trim_messages
from tallygate.errors import InputBudgetExceeded


def measure(msg: Mapping[str, Any]) -> int:
    """A stand-in counter: 4 framing tokens + one per character of text content."""
    content = msg.get("content")
    if isinstance(content, str):
        return 4 + len(content)
    if isinstance(content, list):
        return 4 + sum(len(str(b.get("text", b.get("content", "")))) + 3 for b in content)
    return 4 + 10 * len(msg.get("tool_calls") or [])


def sys(text: str = "be nice") -> dict[str, Any]:
    return {"role": "system", "content": text}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def asst(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def call(*ids: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids
        ],
    }


def result(call_id: str, text: str = "42") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def a_use(tid: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "let me look"},
            {"type": "tool_use", "id": tid, "name": "f", "input": {}},
        ],
    }


def a_result(tid: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": tid, "content": "sunny"}],
    }


def total(messages: list[Mapping[str, Any]], overhead: int = 0) -> int:
    return overhead + sum(measure(m) for m in messages)


# ---------------------------------------------------------------- examples


def test_under_budget_unchanged() -> None:
    msgs = [sys(), user("hi"), asst("hello"), user("bye")]
    result_ = trim_messages(msgs, 1000, measure)
    assert result_.messages == msgs
    assert (result_.removed_count, result_.removed_tokens) == (0, 0)


def test_drops_oldest_first_keeps_system_and_newest() -> None:
    msgs = [sys(), user("a" * 50), asst("b" * 50), user("c" * 50), asst("d" * 50), user("q")]
    budget = total([msgs[0], msgs[3], msgs[4], msgs[5]])
    out = trim_messages(msgs, budget, measure)
    assert out.messages == [msgs[0], msgs[3], msgs[4], msgs[5]]
    assert out.removed_count == 2
    assert out.removed_tokens == 108


def test_exact_budget_boundary() -> None:
    msgs = [sys(), user("x" * 10), asst("y" * 10), user("z")]
    assert trim_messages(msgs, total(msgs), measure).removed_count == 0
    assert trim_messages(msgs, total(msgs) - 1, measure).removed_count == 2


def test_overhead_counts() -> None:
    msgs = [user("x" * 10), asst("y" * 10), user("z")]
    assert trim_messages(msgs, total(msgs), measure, overhead=1).removed_count == 2


def test_orphan_assistant_dropped_after_trim() -> None:
    msgs = [user("a" * 40), asst("b"), user("c"), asst("d"), user("e")]
    budget = total(msgs) - 44  # dropping only the first user message would be enough
    out = trim_messages(msgs, budget, measure)
    assert out.messages == msgs[2:]  # the answer "b" lost its question: dropped too
    assert out.messages[0]["role"] == "user"


def test_openai_tool_calls_stay_with_results() -> None:
    msgs = [
        sys(),
        user("weather?"),
        call("c1", "c2"),
        result("c1", "x" * 30),
        result("c2", "y" * 30),
        asst("it is sunny"),
        user("thanks, and tomorrow?"),
    ]
    budget = total(msgs) - 1
    out = trim_messages(msgs, budget, measure)
    kept_calls = [m for m in out.messages if m.get("tool_calls")]
    kept_results = [m for m in out.messages if m["role"] == "tool"]
    assert (len(kept_calls), len(kept_results)) in ((1, 2), (0, 0))
    assert out.messages[0] == sys()
    assert out.messages[-1] == msgs[-1]


def test_anthropic_tool_use_stays_with_tool_result() -> None:
    msgs = [
        user("a" * 30),
        a_use("t1"),
        a_result("t1"),
        asst("sunny"),
        user("and later?"),
        a_use("t2"),
        a_result("t2"),
    ]
    out = trim_messages(msgs, total(msgs) - 1, measure)
    # the newest unit (t2 pair) and its question are kept; pairs are whole; first is user
    assert out.messages[0]["role"] == "user"
    assert out.messages[-2:] == msgs[-2:]
    assert msgs[4] in out.messages
    def field_of(kind: str, name: str) -> list[str]:
        return [b[name] for m in out.messages if isinstance(m["content"], list)
                for b in m["content"] if b["type"] == kind]

    ids, res = field_of("tool_use", "id"), field_of("tool_result", "tool_use_id")
    assert ids == res


def test_current_turn_old_tool_rounds_droppable() -> None:
    msgs = [user("task"), call("c1"), result("c1", "r" * 100), call("c2"), result("c2", "s")]
    out = trim_messages(msgs, total([msgs[0], msgs[3], msgs[4]]), measure)
    assert out.messages == [msgs[0], msgs[3], msgs[4]]


def test_minimum_too_big_raises() -> None:
    msgs = [sys("s" * 100), user("a"), asst("b"), user("q" * 100)]
    with pytest.raises(InputBudgetExceeded) as info:
        trim_messages(msgs, 150, measure)
    assert info.value.limit == 150
    assert info.value.requested == total([msgs[0], msgs[3]])
    assert "150" in info.value.message


def test_developer_message_pinned_anywhere() -> None:
    dev = {"role": "developer", "content": "rules"}
    msgs = [user("a" * 40), dev, asst("b" * 40), user("q")]
    out = trim_messages(msgs, total([dev, msgs[3]]), measure)
    assert out.messages == [dev, msgs[3]]


def test_empty_conversation() -> None:
    assert trim_messages([], 0, measure).messages == []
    with pytest.raises(InputBudgetExceeded):
        trim_messages([], 0, measure, overhead=5)


# ---------------------------------------------------------------- properties


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    if draw(st.booleans()):
        msgs.append(sys(draw(st.text(max_size=20))))
    counter = 0
    for _ in range(draw(st.integers(1, 12))):
        msgs.append(user(draw(st.text(max_size=30))))
        for _ in range(draw(st.integers(0, 2))):
            ids = [f"c{counter + i}" for i in range(draw(st.integers(1, 3)))]
            counter += len(ids)
            msgs.append(call(*ids))
            msgs.extend(result(i, draw(st.text(max_size=30))) for i in ids)
        if draw(st.booleans()):
            msgs.append(asst(draw(st.text(max_size=30))))
    return msgs


def units_of(msgs: list[Mapping[str, Any]]) -> list[tuple[int, ...]]:
    """Assistant-with-calls plus its tool answers, as tuples of ids (for pairing checks)."""
    out, i = [], 0
    while i < len(msgs):
        if msgs[i].get("tool_calls"):
            j = i + 1
            while j < len(msgs) and msgs[j]["role"] == "tool":
                j += 1
            out.append(tuple(id(m) for m in msgs[i:j]))
            i = j
        else:
            i += 1
    return out


@settings(max_examples=300, deadline=None)
@given(conversations(), st.integers(0, 400), st.integers(0, 10))
def test_trim_properties(msgs: list[dict[str, Any]], budget: int, overhead: int) -> None:
    try:
        out = trim_messages(msgs, budget, measure, overhead=overhead)
    except InputBudgetExceeded as exc:
        assert exc.requested > budget
        assert total(msgs, overhead) > budget
        return
    kept = out.messages
    assert total(kept, overhead) <= budget
    # order preserved: kept is a subsequence of the input (by identity)
    positions = [next(i for i, m in enumerate(msgs) if m is k) for k in kept]
    assert positions == sorted(positions)
    # system kept, newest message kept
    assert [m for m in msgs if m["role"] == "system"] == [m for m in kept if m["role"] == "system"]
    assert kept and kept[-1] is msgs[-1]
    # tool calls never separated from their answers
    kept_ids = {id(m) for m in kept}
    for unit in units_of(msgs):
        assert all(i in kept_ids for i in unit) or not any(i in kept_ids for i in unit)
    # accounting
    assert out.removed_count == len(msgs) - len(kept)
    assert out.removed_tokens == total(msgs) - total(kept)
    # first non-system message is a user message whenever something was dropped
    rest = [m for m in kept if m["role"] != "system"]
    if out.removed_count and rest:
        assert rest[0]["role"] == "user"


@settings(max_examples=200, deadline=None)
@given(conversations(), st.integers(0, 400))
def test_trim_possible_means_success(msgs: list[dict[str, Any]], budget: int) -> None:
    """When system + the last user turn's first unit + the last unit fit, trim succeeds."""
    last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    minimum = [m for m in msgs if m["role"] == "system"] + [msgs[last_user]]
    tail_start = len(msgs) - 1
    while tail_start > 0 and msgs[tail_start]["role"] == "tool":
        tail_start -= 1
    if tail_start != last_user:
        minimum += msgs[tail_start:]
    if total(minimum) <= budget:
        assert total(trim_messages(msgs, budget, measure).messages) <= budget
