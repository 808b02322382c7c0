"""`adapter_for` knows the two wire protocols and nothing else: an unknown protocol is
a configuration error naming the ones there are, never OpenAI by default."""

from __future__ import annotations

import pytest

from tallygate.errors import ConfigError
from tallygate.providers import base
from tallygate.providers.base import adapter_for


def test_each_protocol_has_its_own_adapter() -> None:
    assert adapter_for("openai") is not adapter_for("anthropic")
    assert "authorization" in {h.lower() for h in adapter_for("openai").upstream_headers("s", {})}
    assert "x-api-key" in {h.lower() for h in adapter_for("anthropic").upstream_headers("s", {})}


@pytest.mark.parametrize("protocol", ["gemini", "", "OpenAI ", "openai/v1"])
def test_an_unknown_protocol_is_refused(protocol: str) -> None:
    with pytest.raises(ConfigError, match="Unknown protocol") as err:
        adapter_for(protocol)
    assert "anthropic" in str(err.value) and "openai" in str(err.value)


def test_a_typo_says_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'anthropic'"):
        adapter_for("antropic")
    assert set(base.PROTOCOLS) == {"openai", "anthropic"}
