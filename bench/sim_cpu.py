"""CPU cost of the simulated provider per request (it is the upstream in the overhead
benchmark, so it must stay cheap). The sim runs in its own process; its CPU time is read
from /proc before and after N requests sent by an aiohttp client in this process.

Usage: python bench/sim_cpu.py [--requests 3000]"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import aiohttp
import orjson

SERVER = """
import asyncio, sys
from tallygate.sim import start_sim
async def main():
    server = await start_sim(port=int(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

BODIES = {
    "chat": ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Summarise the budget for Q3 in one line."}]}),
    "chat-stream": ("/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True,
                                             "stream_options": {"include_usage": True},
                                             "messages": [{"role": "user", "content": "Hi"}]}),
    "messages": ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 64,
                                  "messages": [{"role": "user", "content": "Hi there"}]}),
}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(url: str, path: str, body: bytes, n: int, conc: int) -> list[float]:
    lat: list[float] = []
    async with aiohttp.ClientSession() as session:
        async def worker(count: int) -> None:
            for _ in range(count):
                t0 = time.perf_counter()
                async with session.post(url + path, data=body,
                                        headers={"content-type": "application/json"}) as r:
                    await r.read()
                    assert r.status == 200, r.status
                lat.append(time.perf_counter() - t0)
        await asyncio.gather(*(worker(n // conc) for _ in range(conc)))
    return lat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    port = 18000 + os.getpid() % 1000
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        url = f"http://127.0.0.1:{port}"
        print("| route | concurrency | requests | sim CPU µs/request | req/s | p50 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|")
        for name, (path, body) in BODIES.items():
            raw = orjson.dumps(body)
            asyncio.run(run(url, path, raw, 200, 8))  # warm up (tokenizer, caches)
            for conc in (1, 32):
                c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                lat = asyncio.run(run(url, path, raw, args.requests, conc))
                cpu, wall = cpu_seconds(proc.pid) - c0, time.perf_counter() - t0
                lat.sort()
                print(f"| {name} | {conc} | {len(lat)} | {cpu / len(lat) * 1e6:.0f} | "
                      f"{len(lat) / wall:.0f} | {statistics.median(lat) * 1e3:.2f} | "
                      f"{lat[int(len(lat) * 0.99) - 1] * 1e3:.2f} |")
    finally:
        proc.terminate()
        proc.wait(5)


if __name__ == "__main__":
    main()
