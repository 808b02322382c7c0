from __future__ import annotations

from decimal import Decimal

import pytest

from tallygate.core.catalog import Catalog, to_nusd_per_mtok
from tallygate.errors import ConfigError, UnknownModel
from tallygate.types import Usage


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(
        {
            "my-local-llama": {
                "provider": "local",
                "context_window": 8192,
                "encoding": "cl100k_base",
                "input_per_mtok": 0,
                "output_per_mtok": "0.1",
            },
            "gpt-4o-mini": {"input_per_mtok": "0.123456789"},
        }
    )


def test_openai_families(catalog: Catalog) -> None:
    m = catalog.get("gpt-4o")
    assert (m.provider, m.encoding, m.context_window, m.max_output_tokens) == (
        "openai",
        "o200k_base",
        128_000,
        16_384,
    )
    assert m.input_nusd_per_mtok == 2_500_000_000
    assert catalog.get("gpt-4o-2024-08-06").encoding == "o200k_base"
    assert catalog.get("gpt-3.5-turbo").encoding == "cl100k_base"
    assert catalog.get("text-embedding-3-small").encoding == "cl100k_base"
    for name in ("gpt-4.1", "gpt-5", "o3", "o1"):
        assert catalog.get(name).encoding == "o200k_base", name


def test_claude_and_gemini_have_no_tokenizer(catalog: Catalog) -> None:
    claude = catalog.get("claude-sonnet-4-5")
    assert claude.provider == "anthropic" and claude.encoding is None
    assert claude.cached_input_nusd_per_mtok == 300_000_000
    gemini = catalog.get("gemini-2.5-pro")
    assert gemini.provider == "google" and gemini.encoding is None
    assert gemini.context_window == 1_048_576


def test_overrides_and_local_models(catalog: Catalog) -> None:
    local = catalog.get("my-local-llama")
    assert local.provider == "local" and local.encoding == "cl100k_base"
    assert local.output_nusd_per_mtok == 100_000_000
    assert catalog.get("gpt-4o-mini").input_nusd_per_mtok == 123_456_789
    assert catalog.get("gpt-4o-mini").encoding == "o200k_base"


def test_exact_price_conversion() -> None:
    assert to_nusd_per_mtok(Decimal("0.075")) == 75_000_000
    assert to_nusd_per_mtok("2.5") == 2_500_000_000
    assert to_nusd_per_mtok("0.0000000001") == 1  # rounds up, never under-charges
    with pytest.raises(ConfigError):
        to_nusd_per_mtok("abc")
    with pytest.raises(ConfigError):
        to_nusd_per_mtok("-1")


def test_cost_of_a_small_call_is_exact(catalog: Catalog) -> None:
    m = catalog.get("gpt-4o")
    assert m.cost_nusd(Usage(input_tokens=7, output_tokens=3)) == 7 * 2_500 + 3 * 10_000


def test_unknown_model_lists_close_names(catalog: Catalog) -> None:
    with pytest.raises(UnknownModel) as info:
        catalog.get("gpt4o")
    assert "gpt-4o" in info.value.suggestions
    assert "Did you mean" in str(info.value)


def test_bad_override_is_config_error() -> None:
    with pytest.raises(ConfigError, match="context_window"):
        Catalog({"x-local": {"context_window": -5}})
    with pytest.raises(ConfigError, match="unknown field"):
        Catalog({"x-local": {"contxt_window": 5}})
    with pytest.raises(ConfigError, match="encoding"):
        Catalog({"x-local": {"encoding": "p99k"}})


def test_names_cover_genai_prices(catalog: Catalog) -> None:
    names = catalog.names()
    assert len(names) > 500 and "my-local-llama" in names and "claude-sonnet-4-5" in names
    assert catalog.get("gpt-4o") is catalog.get("gpt-4o")  # cached
