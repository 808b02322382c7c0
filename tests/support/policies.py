"""The policy sections most gateway and library tests run with, and the parts of SPEC.md's
example policy that the decision tests and bench/decide.py share."""

from __future__ import annotations

FEATURES = {
    "chat": {"max_input": 4000, "max_output": 100, "model": "gpt-4o-mini", "on_exceed": "trim"},
    "summarize": {"max_input": 50, "max_output": 50, "model": "gpt-4o-mini"},
    "claude": {"max_input": 4000, "max_output": 100, "model": "claude-haiku-4-5"},
    "default": {"max_output": 200},
}
PLANS = {"free": {"tokens_per_day": 2000}, "pro": {"tokens_per_day": 1_000_000}}

# SPEC.md's example: its model tiers and its `chat` feature.
SPEC_TIERS = {"small": "claude-haiku-4-5", "medium": "claude-sonnet-4-5",
              "large": "claude-opus-4-1"}
SPEC_CHAT = {"max_input": 4000, "max_output": 1000, "model": "gpt-4o", "on_exceed": "trim"}
