"""Micro-benchmark of key verification: what a request pays to authenticate.
Prints a markdown table (µs per verify, median of 5 rounds).

    python bench/keys.py [--postgres URL] [--out bench/results/keys.md]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from tallygate.gateway.auth import authenticate
from tallygate.keys import CachedKeyStore, KeyStore, open_keystore

N = 2000


async def per_call_us(fn: Callable[[], Awaitable[object]], n: int = N) -> float:
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            await fn()
        rounds.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(rounds)


async def rows_for(label: str, url: str) -> list[tuple[str, float]]:
    store: KeyStore = await open_keystore(url)
    for i in range(200):  # a table that is not trivially empty
        await store.create(f"user{i}", "free")
    _, secret = await store.create("bench", "pro")
    bad = "tg-" + "x" * 40
    cached = CachedKeyStore(store, ttl=3600)  # long ttl: measure the hit path only
    headers = {"authorization": f"Bearer {secret}"}
    out = [
        (f"{label}: verify, uncached, valid key", await per_call_us(lambda: store.verify(secret))),
        (f"{label}: verify, uncached, unknown key", await per_call_us(lambda: store.verify(bad))),
        (f"{label}: cache hit, valid key", await per_call_us(lambda: cached.verify(secret))),
        (f"{label}: cache hit, unknown key", await per_call_us(lambda: cached.verify(bad))),
        (f"{label}: authenticate() via cache", await per_call_us(
            lambda: authenticate(cached, headers, anthropic=False))),
    ]
    await store.close()
    return out


async def main_async(postgres: str | None) -> list[tuple[str, float]]:
    rows = await rows_for("memory", "memory://")
    with tempfile.TemporaryDirectory() as tmp:
        rows += await rows_for("sqlite", f"sqlite:///{tmp}/keys.db")
    if postgres:
        rows += await rows_for("postgres", postgres)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="postgresql:// URL of a scratch database")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args.postgres))
    lines = [
        f"Machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()}; median of 5 rounds x {N} calls.",
        "",
        "| path | µs per call |",
        "|---|---:|",
        *(f"| {label} | {us:.1f} |" for label, us in rows),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(f"Command: `python {' '.join(sys.argv)}`\n\n{text}\n")


if __name__ == "__main__":
    main()
