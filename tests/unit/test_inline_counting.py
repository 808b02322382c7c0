"""Big requests whose messages are already in the per-message cache (an agent
re-sending its conversation with one new turn) are counted on the event loop; new text
past INLINE_CHARS still goes to a worker thread, and both ways count the same."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tallygate.core import tokens
from tallygate.core.catalog import Catalog
from tallygate.core.tokens import INLINE_CHARS, acount_request, clear_message_cache


def turns(n: int, tag: str) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant",
             "content": f"{tag} turn {i}: " + "words of a long conversation " * 60}
            for i in range(n)]


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each count sent to a worker thread (and still runs it there)."""
    sent: list[str] = []
    real = asyncio.to_thread

    async def to_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(tokens.asyncio, "to_thread", to_thread)
    return sent


async def test_a_conversation_with_one_new_turn_is_counted_inline(threads: list[str]) -> None:
    clear_message_cache()
    model = Catalog().get("gpt-4o-mini")
    history = turns(60, "a")  # ~110,000 characters
    first = await acount_request("openai", "chat/completions", {"messages": history}, model)
    assert threads == ["count_request"]  # all new: tokenized in a thread
    longer = [*history, {"role": "user", "content": "and one more question"}]
    again = await acount_request("openai", "chat/completions", {"messages": longer}, model)
    assert threads == ["count_request"]  # cached but one short turn: on the loop
    clear_message_cache()
    cold = tokens.count_request("openai", "chat/completions", {"messages": longer}, model)
    assert again == cold and again.tokens > first.tokens


async def test_new_text_past_the_inline_budget_still_goes_to_a_thread(
        threads: list[str]) -> None:
    clear_message_cache()
    model = Catalog().get("gpt-4o-mini")
    history = turns(30, "b")
    await acount_request("openai", "chat/completions", {"messages": history}, model)
    fresh = turns(30, "c")  # as much new text again, past INLINE_CHARS
    assert sum(len(m["content"]) for m in fresh) > INLINE_CHARS
    body = {"messages": [*history, *fresh]}
    found = await acount_request("openai", "chat/completions", body, model)
    assert threads == ["count_request", "count_request"]
    clear_message_cache()
    assert found == tokens.count_request("openai", "chat/completions", body, model)
