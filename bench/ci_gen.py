"""`tallygate gen` per chunk, against the local simulator: the floor (the same request
bodies sent with a bare AsyncOpenAI client), generated through the Governor (call,
artifact written, signed entry stored), and served from the artifact cache (signature
check, artifact written, `cached` row). Sequential (concurrency 1), medians of ROUNDS
rounds of PIECES chunks, measured in one run. Prints a markdown table.

    PYTHONPATH=. python bench/ci_gen.py [PIECES] [ROUNDS]"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai
from tests.support.gateway import running_sim, sim_policy

from tallygate.ci.artifacts import open_artifact_cache
from tallygate.ci.gen import Generator, GenOptions
from tallygate.ci.plan import Plan, build_plan
from tallygate.ci.spec import load_spec
from tallygate.config import Policy
from tallygate.core.catalog import resolve_model

SCHEMA = ('{"type": "object", "properties": {"path": {"type": "string"}, '
          '"code": {"type": "string"}}, "required": ["path", "code"], '
          '"additionalProperties": false}')


def spec_file(tmp: Path, pieces: int) -> Path:
    body = "\n\n".join(f"# Module {i}\nModule {i} keeps the ledger of account {i}: it "
                       "records every call and settles usage exactly." for i in range(pieces))
    path = tmp / "spec.md"
    path.write_text(f"---\nschema: {SCHEMA}\n---\n{body}\n")
    return path


async def floor(sim_url: str, bodies: list[dict]) -> float:
    client = openai.AsyncOpenAI(base_url=sim_url + "/v1", api_key="sk-sim", max_retries=0)
    t0 = time.perf_counter()
    for body in bodies:
        await client.chat.completions.create(**body)
    elapsed = time.perf_counter() - t0
    await client.close()
    return elapsed


async def through_gen(plan: Plan, policy: Policy, options: GenOptions, cache_dir: str
                      ) -> float:
    cache, _ = open_artifact_cache(cache_dir, policy)
    t0 = time.perf_counter()
    results = await Generator(plan, policy, options, cache).run()
    elapsed = time.perf_counter() - t0
    assert cache is not None
    await cache.close()
    assert all(r.status in ("generated", "cached") for r in results), results
    return elapsed


def main(pieces: int, rounds: int) -> None:
    with running_sim() as (sim, _), tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        policy = sim_policy(sim.url, tmp_name, cache={"hmac_key": "bench-key"},
                            features={"gen": {"max_output": 300, "model": "gpt-4o-mini"}})
        spec = load_spec(spec_file(tmp, pieces))
        plan = build_plan(spec, "openai", resolve_model("gpt-4o-mini"), 300, None)
        bodies = [c.body for c in plan.chunks]
        fresh = GenOptions(out=tmp / "out", feature="gen", user="bench", run="bench",
                           concurrency=1, refresh=True)
        cached = GenOptions(out=tmp / "out", feature="gen", user="bench", run="bench",
                            concurrency=1)
        cache_dir = str(tmp / "cache")
        asyncio.run(floor(sim.url, bodies[:5]))  # warm-up: tokenizer, connections
        asyncio.run(through_gen(plan, policy, fresh, cache_dir))
        runs: dict[str, list[float]] = {"floor": [], "generated": [], "hit": []}
        for _ in range(rounds):
            runs["floor"].append(asyncio.run(floor(sim.url, bodies)) / pieces)
            runs["generated"].append(asyncio.run(through_gen(plan, policy, fresh,
                                                             cache_dir)) / pieces)
            runs["hit"].append(asyncio.run(through_gen(plan, policy, cached,
                                                       cache_dir)) / pieces)
    med = {k: statistics.median(v) * 1000 for k, v in runs.items()}
    print(f"{pieces} chunks × {rounds} rounds, sequential; ms per chunk (median of rounds)\n")
    print("| path | ms / chunk | × floor |\n|---|---|---|")
    labels = {"floor": "bare AsyncOpenAI → sim (the floor)",
              "generated": "gen: governed call + artifact + signed entry",
              "hit": "gen: cache hit (verify, write, cached row)"}
    for key, label in labels.items():
        print(f"| {label} | {med[key]:.2f} | {med[key] / med['floor']:.2f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30,
         int(sys.argv[2]) if len(sys.argv) > 2 else 5)
