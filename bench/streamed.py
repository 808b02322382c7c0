"""Streamed reservations on agent-sized turns, through the gateway to the simulator (the
official openai SDK as the client, 127.0.0.1 only):

1. one developer's turns in a row on a 60,000-token daily plan — Claude Code's shape: the
   Messages API, claude-sonnet-4-5, max_tokens 32,000, about 18,000 used (a 14,000-token
   context, a 4,000-token answer);
2. Claude-Code-sized calls (ask 32,000, use about 3,300), 4 at a time, on the same plan;
3. the in-flight bound: streams paced at a provider's speed, each cut when its plan runs
   out; how many tokens the provider generated past the last one relayed (the tokens it
   bills but the client never sees), per cut, at two speeds.

Each scenario runs with `reserve: full` and `reserve: streamed` in the same run. Every
turn's usage is checked against the plan: the day's `used` never passes it.

Run: python bench/streamed.py [--trials 20] [--out bench/results/streamed.md]"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.output import publish
from tests.support.gateway import RunningGateway, http, running_gateway, running_sim, sim_policy

from tallygate.sim import SimConfig, SimServer

PLAN = 60_000
ASK = 32_000


def gateway(sim: SimServer, tmp: str, plan: int, **feature: Any) -> Any:
    policy = sim_policy(sim.url, tmp, plans={"agent": {"tokens_per_day": plan}},
                        features={"default": feature})
    return running_gateway(policy)


def day_used(gw: RunningGateway, key: str, user: str) -> int:
    _, _, raw = http("GET", gw.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"})
    [line] = [x for x in orjson.loads(raw)["limits"] if x["key"] == f"user:{user}:tokens:day"]
    assert line["reserved"] == 0, line
    return int(line["used"])


def agent_turn(gw: RunningGateway, key: str, prompt: str) -> str:
    """One streamed Messages turn as Claude Code sends it: "stop", "length" (cut at the
    budget: stop_reason max_tokens) or "refused" (429 before it started)."""
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
    try:
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=ASK,
                                    messages=[{"role": "user", "content": prompt}]) as s:
            final = s.get_final_message()
    except anthropic.RateLimitError:
        return "refused"
    return {"end_turn": "stop", "max_tokens": "length"}[str(final.stop_reason)]


def chat_turn(gw: RunningGateway, key: str, prompt: str) -> tuple[str, int]:
    """The same through Chat Completions (gpt-4.1-mini: 32,768 output tokens at most):
    the finish reason and the content events received (one token each here)."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    finish, received = "none", 0
    for chunk in client.chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": prompt}],
            max_tokens=ASK, stream=True):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            received += bool(choice.delta.content)
    return finish, received


def served(outcomes: list[str]) -> str:
    return (f"{outcomes.count('stop')} answered, {outcomes.count('length')} cut, "
            f"{outcomes.count('refused')} refused")


def sequential(sim: SimServer, tmp: str, mode: str) -> tuple[list[str], int]:
    sim.config.reply_tokens = 4_000
    prompt = "word " * 10_500  # ≈ 14,000 tokens by the gateway's Claude estimate
    with gateway(sim, tmp, PLAN, reserve=mode) as gw:
        key = gw.create_key("dev", "agent")
        outcomes = [agent_turn(gw, key, prompt) for _ in range(5)]
        return outcomes, day_used(gw, key, "dev")


def parallel(sim: SimServer, tmp: str, mode: str, calls: int = 24) -> tuple[list[str], int]:
    sim.config.reply_tokens = 3_000
    prompt = "word " * 300
    with gateway(sim, tmp, PLAN, reserve=mode) as gw:
        key = gw.create_key("dev", "agent")
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(lambda _: agent_turn(gw, key, prompt), range(calls)))
        return outcomes, day_used(gw, key, "dev")


def wait_for(test: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise TimeoutError("the simulator did not record the stream's end")
        time.sleep(0.005)


def in_flight(sim: SimServer, tmp: str, rate: float, trials: int, plan: int = 3_000,
              slice_: int = 512) -> tuple[list[int], int]:
    """Tokens generated past the last relayed one, per cut stream (Chat Completions, one
    token an event); and the worst overrun of the plan itself (0: the relay stops inside
    the hold)."""
    sim.config.reply_tokens = 20_000
    sim.config.tokens_per_second = rate
    past: list[int] = []
    overrun = 0
    try:
        with gateway(sim, tmp, plan, reserve="streamed", stream_slice=slice_) as gw:
            for i in range(trials):
                user = f"dev{i}"
                key = gw.create_key(user, "agent")
                ends = len(sim.stats.stream_writes)
                finish, received = chat_turn(gw, key, "Go on.")
                assert finish == "length", finish
                wait_for(lambda: len(sim.stats.stream_writes) > ends)  # noqa: B023
                written, total = sim.stats.stream_writes[-1]
                assert written < total  # the gateway hung up before the end
                generated = max(0, written - 1)  # the first event is the role, no token
                past.append(generated - received)
                overrun = max(overrun, day_used(gw, key, user) - plan)
    finally:
        sim.config.tokens_per_second = 0.0
    return past, overrun


def pct(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's note on model names
    lines = [f"# Streamed reservations on agent-sized turns ({platform.python_version()}, "
             f"{platform.machine()})", "",
             f"`python bench/streamed.py --trials {args.trials}`; plan {PLAN:,} tokens a day, "
             f"every call asks max_tokens {ASK:,}.", ""]
    with tempfile.TemporaryDirectory() as tmp, \
            running_sim(SimConfig(stream_chunk_tokens=1)) as (sim, _):
        lines += ["Served (claude-sonnet-4-5 over the Messages API):", "",
                  "| scenario | reserve | outcome | day's used |", "|---|---|---|---|"]
        for name, run in (("turns in a row (14k context + 4k answer)", sequential),
                          ("4 at a time (300 context + 3k answer), 24 calls", parallel)):
            for mode in ("full", "streamed"):
                outcomes, used = run(sim, tmp, mode)
                assert used <= PLAN, (name, mode, used)
                lines.append(f"| {name} | {mode} | {served(outcomes)} | {used:,} |")
        lines += ["", "In-flight bound: streams paced at the provider's speed on a 3,000-token "
                  "plan (slice 512), each cut when the plan runs out; tokens the provider "
                  f"generated after the last relayed one, over {args.trials} cuts:", "",
                  "| provider speed | p50 | p99 | max | plan overrun |", "|---|---|---|---|---|"]
        for rate in (1_000.0, 8_000.0):
            past, overrun = in_flight(sim, tmp, rate, args.trials)
            lines.append(f"| {rate:,.0f} tokens/s | {statistics.median(past):.0f} | "
                         f"{pct(past, 0.99)} | {max(past)} | {overrun} |")
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
