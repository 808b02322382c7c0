"""Gateway overhead against the bare forwarding floor, measured in the same run.

Starts the simulated provider, the bare forwarder (bench/floor.py) and the gateway
(`tallygate serve`, SQLite state and ledger, defaults: the one worker owns its state
file; again with alert rules firing; again with `state_mode: shared`, every operation a
SQLite transaction; again with memory:// state; again with the response cache answering)
as separate processes on 127.0.0.1, then
drives each target with an aiohttp load generator: non-streaming latency at 1 and 32
concurrent clients and throughput at 32, and streaming time to first token. Added
latency = target p50 minus the direct-to-simulator p50 of the same round; rounds
alternate targets so machine noise hits all of them alike.

    python bench/overhead.py --requests 2000 --rounds 3 [--out bench/results/overhead.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from output import stop

ROOT = Path(__file__).resolve().parents[1]
BODY = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 16,
                     "messages": [{"role": "user", "content": "Say hello to the benchmark."}]})
STREAM_BODY = orjson.dumps({**orjson.loads(BODY), "stream": True})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def spawn(args: list[str], probe: str, stderr: Path | None = None
          ) -> subprocess.Popen[bytes]:
    """Start a server and wait until `probe` answers (its stderr to a file if given)."""
    err = stderr.open("wb") if stderr is not None else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    wait_up(probe, proc)
    return proc


async def one(session: aiohttp.ClientSession, url: str, body: bytes,
              headers: dict[str, str], stream: bool) -> float:
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as resp:
        if stream:
            async for chunk in resp.content.iter_any():
                if b'"content":"' in chunk and b'"content":""' not in chunk:
                    elapsed = time.perf_counter() - started
                    await resp.read()
                    return elapsed
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")
    return time.perf_counter() - started


async def load(url: str, headers: dict[str, str], *, requests: int, concurrency: int,
               stream: bool) -> tuple[list[float], float]:
    body = STREAM_BODY if stream else BODY
    hdrs = {"content-type": "application/json", **headers}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(min(50, requests)):  # warm-up: connections, caches
            await one(session, url, body, hdrs, stream)
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                latencies.append(await one(session, url, body, hdrs, stream))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, requests / wall


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def gateway_config(tmp: Path, sim_url: str, *, alerts: bool = False,
                   name: str = "tallygate", upstream: str = "lean",
                   state: str | None = None, state_mode: str = "auto",
                   cache: bool = False) -> Path:
    policy: dict[str, object] = {
        "storage": {"state": state or f"sqlite:///{tmp}/state.db",
                    "ledger": f"sqlite:///{tmp}/ledger.db", "state_mode": state_mode},
        "providers": {"openai": {"protocol": "openai", "base_url": f"{sim_url}/v1",
                                 "api_key": "sk-sim"}},
        "features": {"default": {"max_output": 64, "model": "gpt-4o-mini"}},
        "plans": {"bench": {"tokens_per_day": 10**12}},
        "limits": {"global": {"tokens_per_minute": 10**12}},
        "server": {"upstream": upstream},
    }
    if cache:  # every call the same body: all but the first are answered from the cache
        policy["cache"] = {"hmac_key": "bench-only-cache-key"}
        policy["features"] = {"default": {"max_output": 64, "model": "gpt-4o-mini",
                                          "cache": True}}
    if alerts:  # rules that fire constantly, to a webhook that refuses every connection
        dead = f"http://127.0.0.1:{free_port()}/hook"
        policy["alerts"] = [
            {"metric": "context_utilization", "above": 0.000001, "notify": dead},
            {"metric": "cost_usd", "window": "minute", "above": 0.000001, "notify": dead},
            {"metric": "budget_used", "scope": "user", "above": 0.0000001, "notify": dead},
        ]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def create_key(config: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tallygate", "keys", "create", "--config", str(config),
         "--user", "bench", "--plan", "bench", "--json"],
        check=True, capture_output=True,
    )
    return str(orjson.loads(out.stdout)["key"])


SCENARIOS = [  # (name, concurrency, stream)
    ("non-stream c=1", 1, False),
    ("non-stream c=32", 32, False),
    ("stream TTFT c=1", 1, True),
    ("stream TTFT c=32", 32, True),
]


async def run_round(targets: dict[str, tuple[str, dict[str, str]]], requests: int,
                    results: dict[tuple[str, str], list[tuple[list[float], float]]]) -> None:
    for name, concurrency, stream in SCENARIOS:
        n = requests if concurrency > 1 else requests // 2
        for target, (url, headers) in targets.items():
            lat, rps = await load(url, headers, requests=n, concurrency=concurrency,
                                  stream=stream)
            results.setdefault((name, target), []).append((lat, rps))


def report(results: dict[tuple[str, str], list[tuple[list[float], float]]],
           command: str, upstream: str) -> str:
    lines = [
        f"# Gateway overhead against the bare forwarding floor (upstream: {upstream})",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; simulator, floor, gateway and load generator share "
        "the cores. Medians over rounds.",
        "",
        "| scenario | target | p50 ms | p99 ms | req/s | added p50 ms | vs floor |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, _, _ in SCENARIOS:
        rows = {t: v for (s, t), v in results.items() if s == name}
        p50 = {t: statistics.median(pct(lat, 0.5) for lat, _ in v) for t, v in rows.items()}
        for target, values in rows.items():
            p99 = statistics.median(pct(lat, 0.99) for lat, _ in values)
            rps = statistics.median(r for _, r in values)
            added = p50[target] - p50["direct"]
            floor_added = p50["floor"] - p50["direct"]
            gateway = target.startswith("gateway")
            ratio = f"{added / floor_added:.2f}×" if gateway and floor_added > 0 else ""
            lines.append(f"| {name} | {target} | {p50[target]:.2f} | {p99:.2f} | {rps:,.0f} | "
                         f"{added:+.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--upstream", choices=("aiohttp", "lean"), default="lean",
                        help="the gateways' upstream transport (server.upstream)")
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            sim_port, floor_port, gw_port = free_port(), free_port(), free_port()
            sim_url = f"http://127.0.0.1:{sim_port}"
            procs.append(spawn([sys.executable, "-m", "tallygate", "sim", "--port",
                                str(sim_port)], sim_url + "/v1/models"))
            procs.append(spawn([sys.executable, str(ROOT / "bench" / "floor.py"), "--upstream",
                                sim_url, "--port", str(floor_port)],
                               f"http://127.0.0.1:{floor_port}/"))
            config = gateway_config(tmp, sim_url, upstream=args.upstream)
            key = create_key(config)
            gw_url = f"http://127.0.0.1:{gw_port}"
            procs.append(spawn([sys.executable, "-m", "tallygate", "serve", "--config",
                                str(config), "--port", str(gw_port)], gw_url + "/healthz"))
            # The same gateway with alert rules firing at a dead webhook, separate storage.
            alerts_dir = tmp / "alerts"
            alerts_dir.mkdir()
            alerts_config = gateway_config(alerts_dir, sim_url, alerts=True,
                                           upstream=args.upstream)
            alerts_key = create_key(alerts_config)
            alerts_url = f"http://127.0.0.1:{free_port()}"
            procs.append(spawn([sys.executable, "-m", "tallygate", "serve", "--config",
                                str(alerts_config), "--port", alerts_url.rsplit(":", 1)[1]],
                               alerts_url + "/healthz"))
            # The same gateway with SQLite in shared mode (what several workers on one
            # file pay), with its limits in memory:// (no durability at all), and with the
            # response cache on (the same body every time: hits, no upstream call).
            variants = {}
            variants_opts: tuple[tuple[str, dict[str, Any]], ...] = (
                ("shared", {"state_mode": "shared"}), ("memory", {"state": "memory://"}),
                ("cache", {"cache": True}))
            for name, opts in variants_opts:
                var_dir = tmp / name
                var_dir.mkdir()
                var_config = gateway_config(var_dir, sim_url, upstream=args.upstream,
                                            **opts)
                var_key = create_key(var_config)
                var_url = f"http://127.0.0.1:{free_port()}"
                procs.append(spawn([sys.executable, "-m", "tallygate", "serve", "--config",
                                    str(var_config), "--port", var_url.rsplit(":", 1)[1]],
                                   var_url + "/healthz"))
                variants[name] = (var_url + "/v1/chat/completions",
                                  {"authorization": f"Bearer {var_key}"})
            auth = {"authorization": "Bearer sk-sim"}
            targets = {
                "direct": (sim_url + "/v1/chat/completions", auth),
                "floor": (f"http://127.0.0.1:{floor_port}/v1/chat/completions", auth),
                "gateway": (gw_url + "/v1/chat/completions", {"authorization": f"Bearer {key}"}),
                "gateway+alerts": (alerts_url + "/v1/chat/completions",
                                   {"authorization": f"Bearer {alerts_key}"}),
                "gateway shared-sqlite": variants["shared"],
                "gateway memory-state": variants["memory"],
                "gateway cache-hit": variants["cache"],
            }
            results: dict[tuple[str, str], list[tuple[list[float], float]]] = {}
            for _ in range(args.rounds):
                asyncio.run(run_round(targets, args.requests, results))
        finally:
            stop(procs, timeout=10)
    command = "python bench/overhead.py " + " ".join(sys.argv[1:])
    text = report(results, command.strip(), args.upstream)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
