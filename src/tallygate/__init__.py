"""tallygate: token budgets, limits and cost observability in front of every LLM call.

In-process use (docs/library.md): `Governor` wraps the official openai / anthropic clients with
the gateway's enforcement; `count_tokens`, `chunk`, `trim` and `estimate_cost` work
without one. The errors are the gateway's, as exceptions.

The helpers and Governor load on first access (PEP 562), so `import tallygate.errors`
and the CLI's commands do not pay for the model catalog they may not need."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tallygate.errors import (
    BudgetExceeded,
    ConfigError,
    FeatureDisabled,
    InputBudgetExceeded,
    InputTooLarge,
    InvalidRequest,
    LimitError,
    LoopLimit,
    PermissionDenied,
    RateLimited,
    RunawayContext,
    StoreUnavailable,
    TallygateError,
    UnknownModel,
)

if TYPE_CHECKING:
    from tallygate.core.chunk import chunk
    from tallygate.library import Governor
    from tallygate.library.helpers import count_tokens, estimate_cost, trim

__version__ = "0.2.0"

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "FeatureDisabled",
    "Governor",
    "InputBudgetExceeded",
    "InputTooLarge",
    "InvalidRequest",
    "LimitError",
    "LoopLimit",
    "PermissionDenied",
    "RateLimited",
    "RunawayContext",
    "StoreUnavailable",
    "TallygateError",
    "UnknownModel",
    "__version__",
    "chunk",
    "count_tokens",
    "estimate_cost",
    "trim",
]

_LAZY = {
    "Governor": "tallygate.library",
    "chunk": "tallygate.core.chunk",
    "count_tokens": "tallygate.library.helpers",
    "estimate_cost": "tallygate.library.helpers",
    "trim": "tallygate.library.helpers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tallygate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
