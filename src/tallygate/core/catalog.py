"""The model catalog: provider, context window, max output, encoding and prices per model.

Source: the `genai-prices` data snapshot (every model of every provider it knows), plus the
`models:` section of the policy (docs/policy.md) to override entries or add local models.

- Names resolve the way genai-prices does (its own `find_provider_model`, which honours each
  provider's model_match and each model's equals/starts_with/contains clauses, so dated
  snapshots such as `gpt-4o-2024-08-06` resolve). When genai-prices' canonical lookup misses,
  every provider's models are scanned, direct providers (openai, anthropic, google …) before
  aggregators and resellers.
- Prices: genai-prices' Decimal USD per million tokens × 1e9 → integer nano-USD per million,
  exact; a price with more than 9 decimals is rounded *up* (never under-charges). Conditional
  prices are taken at the snapshot's timestamp (genai-prices' own "now", fixed when the
  snapshot loads), or at `prices_at` when given. Tiered prices use the base tier.
- Max output tokens: genai-prices has no such field, so `_FAMILY_LIMITS` documents the major
  families; other models get `DEFAULT_MAX_OUTPUT` (capped by the context window).
- Context window: genai-prices' value; else the family table; else `DEFAULT_CONTEXT_WINDOW`.
- Encoding: tiktoken's own model→encoding rules for OpenAI families (cl100k_base/o200k_base/
  o200k_harmony, available offline); None (= estimated counting) for everything else.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

import tiktoken.model
from genai_prices import data_snapshot
from genai_prices import types as gp

from tallygate.core.bpe import SUPPORTED_ENCODINGS
from tallygate.errors import ConfigError, UnknownModel
from tallygate.types import NANO_PER_USD, ModelInfo

DEFAULT_CONTEXT_WINDOW = 128_000  # typical of current chat models; override in config
DEFAULT_MAX_OUTPUT = 8_192  # conservative default when the family is not in the table
DEFAULT_MODEL = "gpt-4o"

# (name prefix, context window or None = keep genai-prices' value, max output tokens).
# Longest matching prefix wins. Figures from the providers' model pages.
_FAMILY_LIMITS: tuple[tuple[str, int | None, int], ...] = (
    ("gpt-4o-mini", None, 16_384),
    ("gpt-4o", None, 16_384),
    ("chatgpt-4o", None, 16_384),
    ("gpt-4.1", None, 32_768),
    ("gpt-4.5", None, 16_384),
    ("gpt-4-turbo", None, 4_096),
    ("gpt-4", None, 8_192),
    ("gpt-3.5-turbo", None, 4_096),
    ("gpt-5", None, 128_000),
    ("gpt-oss", None, 131_072),
    ("o1-mini", None, 65_536),
    ("o1", None, 100_000),
    ("o3", None, 100_000),
    ("o4-mini", None, 100_000),
    # Claude Code's default request asks claude-opus-5-5 for 128,000 output tokens.
    ("claude-opus-5", None, 128_000),
    ("claude-opus-4", None, 32_000),
    ("claude-sonnet-4", None, 64_000),
    ("claude-haiku-4", None, 64_000),
    ("claude-3-7-sonnet", None, 64_000),
    ("claude-3-5", None, 8_192),
    ("claude-3", None, 4_096),
    ("gemini-2.5", 1_048_576, 65_536),
    ("gemini-3", 1_048_576, 65_536),
    ("gemini-2.0", 1_048_576, 8_192),
    ("gemini-1.5-pro", 2_097_152, 8_192),
    ("gemini-1.5", 1_048_576, 8_192),
)
_DIRECT_FIRST = ("openai", "anthropic", "google", "mistral", "deepseek", "x-ai", "cohere")
_AGGREGATORS = ("openrouter", "together", "fireworks", "groq", "novita", "github-copilot")
_CACHE_LIMIT = 10_000


def to_nusd_per_mtok(value: Any, field: str = "price") -> int:
    """USD per Mtok (Decimal, int, str or finite float via str) → integer nano-USD per Mtok."""
    if isinstance(value, gp.TieredPrices):
        value = value.base
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ConfigError(f"{field}: {value!r} is not a number") from exc
    if not dec.is_finite() or dec < 0:
        raise ConfigError(f"{field}: {value!r} must be a finite, non-negative number")
    return int((dec * NANO_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def encoding_for(name: str, provider: str) -> str | None:
    """tiktoken's encoding for an OpenAI family, or None (no public tokenizer)."""
    base = name.lower().split("/", 1)[1] if "/" in name else name.lower()
    try:
        enc = tiktoken.model.encoding_name_for_model(base)
    except KeyError:
        enc = None
    if enc in SUPPORTED_ENCODINGS:
        return enc
    if enc is None and provider == "openai" and base.startswith(("gpt-", "o1", "o3", "o4")):
        return "o200k_base"  # every current OpenAI chat family uses o200k
    return None


def _family(name: str) -> tuple[int | None, int | None]:
    base = name.lower().rsplit("/", 1)[-1]
    best: tuple[str, int | None, int] | None = None
    for row in _FAMILY_LIMITS:
        if base.startswith(row[0]) and (best is None or len(row[0]) > len(best[0])):
            best = row
    return (best[1], best[2]) if best else (None, None)


class Catalog:
    """Model facts from genai-prices plus config overrides. `get` is cached (thread-safe)."""

    def __init__(
        self,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        prices_at: datetime | None = None,
    ) -> None:
        self._snapshot = data_snapshot.get_snapshot()
        self._at = prices_at or self._snapshot.timestamp
        self._overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        self._cache: dict[str, ModelInfo] = {}
        self._lock = threading.Lock()
        self._names: list[str] | None = None
        for name, spec in self._overrides.items():
            self._cache[name] = self._from_override(name, spec)  # validates eagerly

    def names(self) -> list[str]:
        """Every model id genai-prices knows plus the configured ones, sorted."""
        if self._names is None:
            found = {m.id for p in self._snapshot.providers for m in p.models}
            self._names = sorted(found | set(self._overrides))
        return list(self._names)

    def get(self, name: str) -> ModelInfo:
        info = self._cache.get(name)
        if info is not None:
            return info
        if not isinstance(name, str) or not name.strip():
            raise UnknownModel(str(name), [])
        info = self._resolve(name)
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()  # bound memory against hostile model names
                for key, spec in self._overrides.items():
                    self._cache[key] = self._from_override(key, spec)
            self._cache[name] = info
        return info

    def find(self, name: str) -> ModelInfo | None:
        """get(), or None for a model the catalog does not know."""
        try:
            return self.get(name)
        except UnknownModel:
            return None

    def suggestions(self, name: str, n: int = 5) -> list[str]:
        return difflib.get_close_matches(name, self.names(), n=n, cutoff=0.5)

    def _resolve(self, name: str) -> ModelInfo:
        found = self._lookup(name)
        if found is None:
            raise UnknownModel(name, self.suggestions(name))
        provider, model = found
        return self._build(name, provider.id, model)

    def _lookup(self, name: str) -> tuple[gp.Provider, gp.ModelInfo] | None:
        try:
            return self._snapshot.find_provider_model(name, None, None, None)
        except LookupError:
            pass
        ref = name.lower()
        if "/" in ref:  # "openai/gpt-4o": a provider prefix restricts the search
            prefix, rest = ref.split("/", 1)
            for provider in self._snapshot.providers:
                if provider.id == prefix and (model := provider.find_model(rest)) is not None:
                    return provider, model
        ordered = self._ordered_providers()
        for provider in ordered:
            for model in provider.models:
                if model.is_match(ref):
                    return provider, model
        # Some ids are not matched by their own clauses (e.g. "codestral"): every
        # name that names() lists must resolve.
        for provider in ordered:
            for model in provider.models:
                if model.id.lower() == ref:
                    return provider, model
        return None

    def _ordered_providers(self) -> Iterable[gp.Provider]:
        def rank(p: gp.Provider) -> tuple[int, int]:
            if p.id in _DIRECT_FIRST:
                return (0, _DIRECT_FIRST.index(p.id))
            if p.id in _AGGREGATORS or p.id.startswith("huggingface"):
                return (2, 0)
            return (1, 0)

        return sorted(self._snapshot.providers, key=rank)  # stable: snapshot order within a rank

    def _build(self, name: str, provider: str, model: gp.ModelInfo) -> ModelInfo:
        prices = model.get_prices(self._at)
        fam_ctx, fam_out = _family(name)
        context = model.context_window or fam_ctx or DEFAULT_CONTEXT_WINDOW
        max_out = min(fam_out or DEFAULT_MAX_OUTPUT, context)
        cached = prices.cache_read_mtok
        written = prices.cache_write_mtok
        return ModelInfo(
            name=name,
            provider=provider,
            context_window=context,
            max_output_tokens=max_out,
            encoding=encoding_for(name, provider),
            input_nusd_per_mtok=_price(prices.input_mtok),
            output_nusd_per_mtok=_price(prices.output_mtok),
            cached_input_nusd_per_mtok=None if cached is None else _price(cached),
            cache_write_nusd_per_mtok=None if written is None else _price(written),
        )

    def _from_override(self, name: str, spec: Mapping[str, Any]) -> ModelInfo:
        """A `models:` entry: overrides fields of a known model, or defines a new one."""
        known = set(_OVERRIDE_FIELDS)
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(
                f"models.{name}: unknown field(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(_OVERRIDE_FIELDS)}"
            )
        base: ModelInfo | None = None
        found = self._lookup(name)
        if found is not None:
            base = self._build(name, found[0].id, found[1])
        return _apply_override(name, spec, base)


_OVERRIDE_FIELDS = (
    "provider",
    "context_window",
    "max_output_tokens",
    "encoding",
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
)


def _price(value: Decimal | gp.TieredPrices | None) -> int:
    return 0 if value is None else to_nusd_per_mtok(value)


def _positive_int(name: str, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"models.{name}.{field}: expected a positive integer, got {value!r}")
    return value


def _encoding_field(name: str, value: Any) -> str | None:
    if value is None or value in ("none", "estimate"):
        return None
    if value not in SUPPORTED_ENCODINGS:
        raise ConfigError(
            f"models.{name}.encoding: {value!r} is not one of "
            f"{', '.join(SUPPORTED_ENCODINGS)} (or none)"
        )
    return str(value)


def _apply_override(name: str, spec: Mapping[str, Any], base: ModelInfo | None) -> ModelInfo:
    provider = str(spec.get("provider", base.provider if base else "local"))
    ctx_raw = spec.get("context_window", base.context_window if base else DEFAULT_CONTEXT_WINDOW)
    context = _positive_int(name, "context_window", ctx_raw)
    default_out = base.max_output_tokens if base else min(DEFAULT_MAX_OUTPUT, context)
    max_out = _positive_int(name, "max_output_tokens", spec.get("max_output_tokens", default_out))
    if "encoding" in spec:
        encoding = _encoding_field(name, spec["encoding"])
    else:
        encoding = base.encoding if base else encoding_for(name, provider)

    def money(field: str, current: int | None) -> int | None:
        if field not in spec:
            return current
        return to_nusd_per_mtok(spec[field], f"models.{name}.{field}")

    return ModelInfo(
        name=name,
        provider=provider,
        context_window=context,
        max_output_tokens=max_out,
        encoding=encoding,
        input_nusd_per_mtok=money("input_per_mtok", base.input_nusd_per_mtok if base else 0) or 0,
        output_nusd_per_mtok=money("output_per_mtok", base.output_nusd_per_mtok if base else 0)
        or 0,
        cached_input_nusd_per_mtok=money(
            "cached_input_per_mtok", base.cached_input_nusd_per_mtok if base else None
        ),
        cache_write_nusd_per_mtok=money(
            "cache_write_per_mtok", base.cache_write_nusd_per_mtok if base else None
        ),
    )


_default: Catalog | None = None
_default_lock = threading.Lock()


def default_catalog() -> Catalog:
    """The process-wide catalog without overrides (built once, lazily)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Catalog()
    return _default


def resolve_model(model: ModelInfo | str | None) -> ModelInfo:
    """A ModelInfo from a ModelInfo, a name (default catalog) or None (gpt-4o)."""
    if isinstance(model, ModelInfo):
        return model
    return default_catalog().get(model or DEFAULT_MODEL)
