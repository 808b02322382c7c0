"""tallygate: token budgets, limits and cost observability in front of every LLM call."""

from __future__ import annotations

from tallygate.errors import (
    BudgetExceeded,
    ConfigError,
    FeatureDisabled,
    InputBudgetExceeded,
    InputTooLarge,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    TallygateError,
    UnknownModel,
)

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "FeatureDisabled",
    "InputBudgetExceeded",
    "InputTooLarge",
    "InvalidRequest",
    "PermissionDenied",
    "RateLimited",
    "TallygateError",
    "UnknownModel",
    "__version__",
]
