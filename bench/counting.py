"""Counting benchmark: throughput vs raw tiktoken, cached re-count cost, hostile inputs.

Run: python bench/counting.py  (writes bench/results/counting.md; bounded to well under 2 min)
"""

from __future__ import annotations

import asyncio
import platform
import random
import string
import sys
import time
from pathlib import Path

from tallygate.core import bpe, tokens
from tallygate.core.catalog import resolve_model
from tallygate.errors import InputTooLarge

GPT4O = resolve_model("gpt-4o")
ENC = bpe.get_encoding("o200k_base")


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def throughput() -> list[str]:
    prose = (Path(__file__).resolve().parents[1] / "README.md").read_text() * 1
    words = "The quick brown fox jumps over the lazy dog, and 42 more words follow. "
    text = (prose + words * 2000) * 4
    n = len(ENC.encode_ordinary(text))
    raw = best_of(lambda: ENC.encode_ordinary(text))
    ours = best_of(lambda: tokens.count_text(text, GPT4O))
    return [
        f"| plain text, {len(text):,} chars, {n:,} tokens | raw tiktoken.encode_ordinary "
        f"| {n / raw / 1e6:.2f} M tok/s ({raw * 1000:.1f} ms) |",
        f"| same | tallygate count_text | {n / ours / 1e6:.2f} M tok/s ({ours * 1000:.1f} ms) |",
    ]


def recount() -> list[str]:
    rng = random.Random(1)
    vocab = [w for w in (string.ascii_lowercase * 3).split() if w] or ["x"]
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(500)]
    convo = []
    for i in range(100):
        body = " ".join(rng.choices(vocab, k=350))
        convo.append({"role": "user" if i % 2 else "assistant", "content": body})
    tokens.clear_message_cache()
    t = time.perf_counter()
    full = tokens.count_openai_chat(convo, GPT4O)
    cold = time.perf_counter() - t
    convo.append({"role": "user", "content": "one more question about the above?"})
    warm = best_of(lambda: tokens.count_openai_chat(convo, GPT4O), repeat=7)
    tokens.clear_message_cache()
    fresh = best_of(lambda: (tokens.clear_message_cache(), tokens.count_openai_chat(convo, GPT4O)))
    return [
        f"| 100-turn conversation, {full.tokens:,} tokens: full count (cold cache) "
        f"| {cold * 1000:.1f} ms | |",
        f"| full recount with cache cleared (best of 5) | {fresh * 1000:.1f} ms | |",
        f"| recount after appending one turn (cache warm) | {warm * 1000:.2f} ms "
        f"| {warm / fresh * 100:.2f}% of a full recount |",
    ]


async def with_loop_probe(fn) -> tuple[float, float, str]:
    """Run fn off the loop via the async API; return (elapsed, max tick delay, outcome)."""
    delays: list[float] = []
    stop = False

    async def probe() -> None:
        while not stop:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            delays.append(time.perf_counter() - t - 0.001)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    t = time.perf_counter()
    try:
        outcome = await fn()
    except InputTooLarge as exc:
        outcome = f"rejected: {exc.message}"
    elapsed = time.perf_counter() - t
    stop = True
    await task
    return elapsed, max(delays) if delays else 0.0, outcome


def hostile() -> list[str]:
    cases = {
        "10 MB of one letter": "a" * 10_000_000,
        "4 M chars of one letter (under the cap)": "a" * 3_999_999,
        "1 MB of base64": __import__("base64").b64encode(random.randbytes(750_000)).decode(),
        "1 M spaces": " " * 1_000_000,
        "1 M random letters, no whitespace": "".join(random.choices(string.ascii_letters, k=10**6)),
        "lone surrogates x 100k": "\ud800x" * 100_000,
    }
    rows = []
    for name, text in cases.items():

        async def run(text: str = text):
            c = await tokens.acount_text(text, GPT4O)
            return f"{c.tokens:,} tokens, exact={c.exact}"

        elapsed, tick, outcome = asyncio.run(with_loop_probe(run))
        rows.append(f"| {name} | {elapsed * 1000:.0f} ms | {tick * 1000:.1f} ms | {outcome} |")
    return rows


def main() -> None:
    start = time.perf_counter()
    out = [
        "# Counting benchmark",
        "",
        f"Command: `python bench/counting.py` — Python {sys.version.split()[0]}, "
        f"{platform.machine()}, 2 shared cores (other helpers running: numbers are noisy).",
        "",
        "## Throughput (o200k_base)",
        "| input | counter | speed |",
        "| --- | --- | --- |",
        *throughput(),
        "",
        "## Re-counting a conversation (per-message cache)",
        "| case | time | note |",
        "| --- | --- | --- |",
        *recount(),
        "",
        "## Hostile inputs via acount_text (event loop probed every 1 ms)",
        "| input | time | max loop tick delay | result |",
        "| --- | --- | --- | --- |",
        *hostile(),
        "",
        f"Total benchmark time: {time.perf_counter() - start:.1f} s",
    ]
    text = "\n".join(out) + "\n"
    dest = Path(__file__).resolve().parent / "results" / "counting.md"
    dest.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
