"""The canonical cache key: stable under key order, blind to user/stream/metadata,
different for every parameter that can change the answer."""

from __future__ import annotations

import pytest

from tallygate.cache import request_key, turns_key

BASE = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2}


def _key(body: dict, feature: str = "chat") -> str:
    return request_key("openai", "chat/completions", "gpt-4o-mini", body, feature)


def test_order_and_ignored_fields() -> None:
    reordered = dict(reversed(list(BASE.items())))
    assert _key(reordered) == _key(BASE)
    noisy = {**BASE, "user": "u", "stream": True, "stream_options": {"include_usage": True},
             "metadata": {"a": "b"}}
    assert _key(noisy) == _key(BASE)


@pytest.mark.parametrize("change", [
    {"temperature": 0.3}, {"top_p": 0.9}, {"seed": 1}, {"stop": "x"}, {"n": 2},
    {"max_tokens": 5}, {"max_completion_tokens": 5}, {"tool_choice": "none"},
    {"tools": []}, {"response_format": {"type": "json_object"}},
    {"messages": [{"role": "user", "content": "hi!"}]}, {"system": "be brief"},
])
def test_each_parameter_changes_the_key(change: dict) -> None:
    assert _key({**BASE, **change}) != _key(BASE)


def test_feature_protocol_and_model_are_part_of_the_key() -> None:
    assert _key(BASE, "other") != _key(BASE)
    assert request_key("anthropic", "messages", "gpt-4o-mini", BASE, "chat") != _key(BASE)
    assert request_key("openai", "chat/completions", "gpt-4o", BASE, "chat") != _key(BASE)


def test_turns_key() -> None:
    turns = [{"role": "user", "content": "a"}]
    assert turns_key("m", turns) == turns_key("m", [dict(turns[0])])
    assert turns_key("m", turns) != turns_key("n", turns)
