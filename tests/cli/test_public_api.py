"""`import tallygate`: __all__ lists exactly the public names, and every one imports."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from decimal import Decimal

import pytest

import tallygate
from tallygate.errors import LimitError, TallygateError

EXPECTED = {
    "BudgetExceeded", "ConfigError", "FeatureDisabled", "Governor", "InputBudgetExceeded",
    "InputTooLarge", "InvalidRequest", "LimitError", "LoopLimit", "PermissionDenied",
    "RateLimited", "RunawayContext",
    "StoreUnavailable", "TallygateError", "UnknownModel", "__version__", "chunk",
    "count_tokens", "estimate_cost", "trim",
}


def test_all_matches_the_public_names() -> None:
    assert set(tallygate.__all__) == EXPECTED
    assert len(tallygate.__all__) == len(EXPECTED)
    # Every other public attribute is a submodule or a typing helper of the module itself.
    others = {n for n in dir(tallygate) if not n.startswith("_")} - EXPECTED
    for name in others:
        value = getattr(tallygate, name)
        assert isinstance(value, types.ModuleType) or name in {"TYPE_CHECKING", "Any",
                                                               "annotations"}, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_name_imports_in_a_fresh_interpreter(name: str) -> None:
    code = f"from tallygate import {name}; print(type({name}).__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        importlib.import_module("tallygate").no_such_name  # noqa: B018


def test_budget_errors_carry_the_figures() -> None:
    for cls in (tallygate.BudgetExceeded, tallygate.InputBudgetExceeded, tallygate.RateLimited):
        assert issubclass(cls, LimitError) and issubclass(cls, TallygateError)
        err = cls("no room", limit=100, used=70, retry_after=12.5)
        assert (err.limit, err.used, err.remaining, err.retry_after) == (100, 70, 30, 12.5)
    assert issubclass(tallygate.FeatureDisabled, TallygateError)


def test_helpers() -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "word " * 300},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "Now?"}]
    total = tallygate.count_tokens(messages, model="gpt-4o")
    assert isinstance(total, int) and total > 300
    assert tallygate.count_tokens("hello world", model="gpt-4o") == 2
    assert tallygate.count_tokens({"messages": messages}, model="gpt-4o") == total
    assert tallygate.count_tokens(messages, model="claude-haiku-4-5") > 0
    kept = tallygate.trim(messages, max_tokens=40, model="gpt-4o")
    assert kept[0] == messages[0] and kept[-1] == messages[-1] and len(kept) < len(messages)
    assert tallygate.count_tokens(kept, model="gpt-4o") <= 40
    assert "".join(tallygate.chunk("a b c. " * 50, 10, model="gpt-4o")) == "a b c. " * 50
    cost = tallygate.estimate_cost("gpt-4o", 1_000_000, 1_000_000)
    assert isinstance(cost, Decimal) and cost == Decimal("12.5")  # $2.50 in + $10 out
    with pytest.raises(tallygate.InvalidRequest):
        tallygate.estimate_cost("gpt-4o", -1, 0)
    with pytest.raises(tallygate.UnknownModel):
        tallygate.estimate_cost("no-such-model-xyz", 1, 1)
