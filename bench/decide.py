"""Micro-benchmark of the pure decision path: resolve_model(), decide(), holds, and
trim_messages() on a long conversation. Prints a markdown table (µs per call).

    python bench/decide.py [--out bench/results/decide.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.policies import SPEC_CHAT, SPEC_TIERS

from tallygate.config import Policy
from tallygate.core.decide import RequestFacts, decide, denial_to_error, resolve_model
from tallygate.core.limits import Identity
from tallygate.core.trim import trim_messages
from tallygate.types import Count, Denial, Hold, Metric, ModelInfo, Window

SPEC_LIKE = {
    "tiers": SPEC_TIERS,
    "features": {
        "chat": SPEC_CHAT,
        "summarize": {"max_input": 16000, "max_output": 500, "model": "gpt-4o-mini"},
    },
    "plans": {"free": {"tokens_per_day": 10000}, "pro": {"tokens_per_day": 100000}},
    "limits": {"global": {"tokens_per_minute": 1_000_000}},
    "routing": {"steps": {"planning": "large", "execution": "medium"}},
}
EVERY_SCOPE = {
    **SPEC_LIKE,
    "limits": {
        "global": {"tokens_per_minute": 1_000_000, "cost_usd_per_day": 500},
        "feature": {"default": {"tokens_per_day": 1_000_000}},
        "user": {"requests_per_minute": 60},
        "plan": {"default": {"tokens_per_month": 10**9}},
        "key": {"tokens_per_hour": 100_000},
        "model": {"default": {"tokens_per_minute": 400_000}},
        "run": {"cost_usd_per_day": 5},
    },
}
GPT4O = ModelInfo("gpt-4o", "openai", 128_000, 16_384, "o200k_base", 2_500_000_000, 10_000_000_000)


def per_call_us(
    fn: Callable[[], Any], number: int = 20_000, repeat: int = 7
) -> tuple[float, float]:
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    per = [r / number * 1e6 for r in runs]
    return min(per), statistics.median(per)


def cases() -> list[tuple[str, Callable[[], Any]]]:
    spec = Policy.from_mapping(SPEC_LIKE, env={})
    every = Policy.from_mapping(EVERY_SCOPE, env={})
    ident = Identity(key_id="key_8f2a", user="user-42", plan="free", run="run:2026-11-24")
    facts = RequestFacts(
        "openai", "gpt-4o", "chat", Count(1200, True, "o200k_base"), 800, 1, identity=ident
    )
    anon = RequestFacts("openai", "gpt-4o", "chat", Count(1200, True, "o200k_base"))
    over = RequestFacts("openai", "gpt-4o", "summarize", Count(16001, True, "o200k_base"))
    denial = Denial("user:user-42:tokens:day", 10000, 9990, 50, 86400.0, Window.DAY, Metric.TOKENS)
    convo = [{"role": "system", "content": "s" * 200}]
    for i in range(100):
        convo += [
            {"role": "user", "content": f"q{i}" * 40},
            {"role": "assistant", "content": f"a{i}" * 60},
        ]
    sizes = {id(m): len(m["content"]) // 4 + 4 for m in convo}
    return [
        (
            "baseline: build one frozen types.Hold",
            lambda: Hold("k", 1, 2, Window.DAY, Metric.TOKENS, False),
        ),
        (
            "resolve_model('auto', step=planning)",
            lambda: resolve_model("auto", feature="chat", step="planning", policy=spec),
        ),
        ("decide: SPEC policy, anonymous (1 hold)", lambda: decide(anon, spec, GPT4O)),
        ("decide: SPEC policy, key+user+plan+run (2 holds)", lambda: decide(facts, spec, GPT4O)),
        ("decide: limits on every scope (10 holds)", lambda: decide(facts, every, GPT4O)),
        ("decide: input over max_input (reject)", lambda: decide(over, spec, GPT4O)),
        ("denial_to_error", lambda: denial_to_error(denial, 1000.0)),
        (
            "trim_messages: 201 messages → 2,000 tokens",
            lambda: trim_messages(convo, 2000, lambda m: sizes[id(m)]),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()
    rows = []
    for name, fn in cases():
        number = 500 if name.startswith("trim") else 20_000
        best, median = per_call_us(fn, number=number)
        rows.append(f"| {name} | {best:.2f} | {median:.2f} |")
        print(rows[-1], flush=True)
    table = "\n".join(["| case | best µs/call | median µs/call |", "|---|---:|---:|", *rows])
    machine = f"{platform.machine()}, Python {sys.version.split()[0]}, {platform.system()}"
    text = (
        "# decide() micro-benchmark\n\n"
        "Command: `python bench/decide.py --out bench/results/decide.md`\n\n"
        f"Machine: {machine}; 2 shared cores (other helpers were running). "
        "timeit, 7 repeats; best and median of the per-call means.\n\n" + table + "\n"
    )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
