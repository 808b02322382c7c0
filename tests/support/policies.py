"""The policy sections most gateway and library tests run with."""

from __future__ import annotations

FEATURES = {
    "chat": {"max_input": 4000, "max_output": 100, "model": "gpt-4o-mini", "on_exceed": "trim"},
    "summarize": {"max_input": 50, "max_output": 50, "model": "gpt-4o-mini"},
    "claude": {"max_input": 4000, "max_output": 100, "model": "claude-haiku-4-5"},
    "default": {"max_output": 200},
}
PLANS = {"free": {"tokens_per_day": 2000}, "pro": {"tokens_per_day": 1_000_000}}
