"""Library-mode overhead: the same sync OpenAI chat call to the local simulator, raw vs
through `Governor` (memory:// state, SQLite ledger). Prints a markdown table.

    PYTHONPATH=. python bench/library_overhead.py [CALLS]"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import openai
from tests.support.gateway import running_sim, sim_policy

import tallygate

MESSAGES = [{"role": "user", "content": "Hello there, how are you?"}]


def timed(client: openai.OpenAI, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=16)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def row(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p50, p95 = ms[len(ms) // 2], ms[int(len(ms) * 0.95)]
    return f"| {name} | {len(ms)} | {statistics.mean(ms):.2f} | {p50:.2f} | {p95:.2f} |"


def main(calls: int) -> None:
    with running_sim() as (sim, _), tempfile.TemporaryDirectory() as tmp:
        raw = openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-sim", max_retries=0)
        policy = sim_policy(sim.url, tmp, plans={"pro": {"tokens_per_day": 10**9}})
        with tallygate.Governor(policy) as gov:
            governed = gov.openai(raw, feature="chat", user="bench", plan="pro")
            timed(raw, 20)
            timed(governed, 20)  # warm-up: runtime open, tokenizer loaded
            raw_ms, gov_ms = timed(raw, calls), timed(governed, calls)
    print("| client | calls | mean ms | p50 ms | p95 ms |\n|---|---|---|---|---|")
    print(row("openai.OpenAI → sim", raw_ms))
    print(row("gov.openai(…) → sim", gov_ms))
    delta = statistics.median(gov_ms) - statistics.median(raw_ms)
    print(f"\nmedian overhead per call: {delta:.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
