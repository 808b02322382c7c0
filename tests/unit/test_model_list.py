"""`GET /v1/models`' list: per protocol, only what a configured provider serves and a
name one can call on the proxied routes."""

from __future__ import annotations

from tallygate.core.catalog import default_catalog
from tallygate.gateway.model_list import callable_models, listable


def _names(providers: dict[str, str]) -> dict[str, set[str]]:
    found = callable_models(default_catalog(), providers, {})
    return {protocol: {m.id for m in models} for protocol, models in found.items()}


def test_a_provider_not_configured_lists_none_of_its_models() -> None:
    only_openai = _names({"openai": "openai"})
    assert "gpt-4o-mini" in only_openai["openai"]
    assert only_openai["anthropic"] == set()
    assert not any(name.startswith("claude") for name in only_openai["openai"])
    only_anthropic = _names({"anthropic": "anthropic"})
    assert only_openai["openai"] and only_anthropic["openai"] == set()
    assert "claude-sonnet-4-5" in only_anthropic["anthropic"]


def test_names_nobody_calls_here_are_left_out() -> None:
    for name in ("tts-1", "ft:gpt-4o", "openai/gpt-4o", "anthropic/claude-haiku-4.5:batch",
                 "whisper-1", "dall-e-3", "gpt-4o-realtime-preview"):
        assert not listable(name), name
    assert listable("gpt-4.1-mini") and listable("claude-opus-4-1")
