"""Shorten a conversation to a token budget by dropping its oldest turns. Pure.

Works on OpenAI chat messages and Anthropic messages alike. The conversation is cut
into units that must stay whole:
  - an OpenAI assistant message with `tool_calls` (or `function_call`) and the `tool`
    (`function`) messages right after it that answer it;
  - an Anthropic assistant message with `tool_use` blocks and the next user message
    carrying the `tool_result` blocks;
  - any other single message.
Always kept: system/developer messages (wherever they are), the newest unit, and the
last unit that starts with a user message (the question being answered). Everything
else is droppable, oldest first. After dropping, a unit left at the front that does not
start with a user message (an answer whose question was dropped) is dropped too:
Anthropic requires the first message to be `user`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tallygate.errors import InputBudgetExceeded

_PINNED_ROLES = frozenset({"system", "developer"})
_TOOL_ANSWER_ROLES = frozenset({"tool", "function"})


@dataclass(frozen=True, slots=True)
class TrimResult:
    messages: list[Mapping[str, Any]]
    removed_count: int  # messages removed
    removed_tokens: int  # their measured tokens


@dataclass(slots=True)
class _Unit:
    start: int  # index of the first message
    end: int  # one past the last
    tokens: int
    pinned: bool
    first_role: str


def trim_messages(
    messages: Sequence[Mapping[str, Any]],
    budget_tokens: int,
    measure: Callable[[Mapping[str, Any]], int],
    *,
    overhead: int = 0,
) -> TrimResult:
    """Drop the oldest droppable units until `overhead + Σ measure(kept) ≤ budget_tokens`.

    `measure` gives one message's tokens (framing included); `overhead` is what the
    request costs besides its messages (reply priming, tools, a top-level system).
    Raises InputBudgetExceeded when even the messages that must be kept do not fit."""
    sizes = [measure(m) for m in messages]
    total = overhead + sum(sizes)
    if total <= budget_tokens:
        return TrimResult(list(messages), 0, 0)
    units = _units(messages, sizes)
    keep = [True] * len(units)
    protected = _protected(units)
    for i, unit in enumerate(units):
        if total <= budget_tokens:
            break
        if i not in protected:
            keep[i] = False
            total -= unit.tokens
    total -= _drop_orphan_front(units, keep, protected)
    if total > budget_tokens:
        raise InputBudgetExceeded(
            f"Cannot trim the conversation to {budget_tokens} tokens: the system prompt(s) "
            f"and the newest turn alone need {total}",
            param="messages",
            limit_key="trim",
            limit=budget_tokens,
            requested=total,
        )
    pairs = list(zip(units, keep, strict=True))
    kept = [messages[j] for u, k in pairs if k for j in range(u.start, u.end)]
    removed = [u for u, k in pairs if not k]
    return TrimResult(
        kept,
        removed_count=sum(u.end - u.start for u in removed),
        removed_tokens=sum(u.tokens for u in removed),
    )


def _protected(units: list[_Unit]) -> set[int]:
    """Pinned units, the newest unit, and the last unit opened by a user message."""
    out = {i for i, u in enumerate(units) if u.pinned}
    conversation = [i for i, u in enumerate(units) if not u.pinned]
    if conversation:
        out.add(conversation[-1])
        for i in reversed(conversation):
            if units[i].first_role == "user":
                out.add(i)
                break
    return out


def _drop_orphan_front(units: list[_Unit], keep: list[bool], protected: set[int]) -> int:
    """After a trim, drop leading non-user units (their question is gone)."""
    if all(keep):
        return 0
    freed = 0
    for i, unit in enumerate(units):
        if unit.pinned or not keep[i]:
            continue
        if unit.first_role == "user" or i in protected:
            break
        keep[i] = False
        freed += unit.tokens
    return freed


def _units(messages: Sequence[Mapping[str, Any]], sizes: list[int]) -> list[_Unit]:
    units: list[_Unit] = []
    i, count = 0, len(messages)
    while i < count:
        msg = messages[i]
        role = str(msg.get("role", ""))
        end = i + 1
        if role == "assistant" and _calls_openai_tools(msg):
            while end < count and messages[end].get("role") in _TOOL_ANSWER_ROLES:
                end += 1
        elif role == "assistant" and _has_block(msg, "tool_use") and end < count:
            nxt = messages[end]
            if nxt.get("role") == "user" and _has_block(nxt, "tool_result"):
                end += 1
        units.append(_Unit(i, end, sum(sizes[i:end]), role in _PINNED_ROLES, role))
        i = end
    return units


def _calls_openai_tools(msg: Mapping[str, Any]) -> bool:
    return bool(msg.get("tool_calls")) or bool(msg.get("function_call"))


def _has_block(msg: Mapping[str, Any], kind: str) -> bool:
    content = msg.get("content")
    if not isinstance(content, list):
        return False
    return any(isinstance(b, Mapping) and b.get("type") == kind for b in content)
