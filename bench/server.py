"""The HTTP server under the gateway: today's uvicorn + httptools, the same with the
connection defences (gateway/guarded_http.py, `server.http: guarded`, the default),
granian and hypercorn — each serving the same gateway (one worker, its own SQLite
state and ledger, the simulator upstream) and, separately, a bare hello app (the
server's own cost). Added latency = target p50 minus the direct-to-simulator p50 of
the same round; rounds alternate targets so machine noise hits all alike.

What each offers against the defences the gateway needs (docs/gateway.md): uvicorn has
only the idle keep-alive timeout; granian has a header read timeout and a request
backpressure cap but no body deadline, no connection cap answering 503 and no 431;
hypercorn has keep-alive and read timeouts and a header size cap (h11), no connection
cap. The guarded protocol has all of them.

    pip install granian hypercorn   # compared here only; not tallygate dependencies
    python bench/server.py --requests 2000 --rounds 3 [--out bench/results/server.md]
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
from pathlib import Path

import yaml
from output import stop
from overhead import create_key, free_port, gateway_config, load, pct, wait_up

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCENARIOS = [("gateway c=1", 1, False), ("gateway c=32", 32, False),
             ("gateway stream TTFT c=1", 1, True), ("hello c=1", 1, False),
             ("hello c=32", 32, False)]
SERVERS = ("uvicorn", "uvicorn+guards", "granian", "hypercorn")


def server_command(server: str, config: Path, port: int, app: str) -> list[str]:
    """How to run `app` (gateway | hello) under `server` on 127.0.0.1:port."""
    if server.startswith("uvicorn") and app == "gateway":
        return [sys.executable, "-m", "tallygate", "serve", "--config", str(config),
                "--port", str(port)]
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "server_apps:hello", "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
                "--no-access-log"]
    if server == "uvicorn+guards":
        return [sys.executable, "-c",
                "import uvicorn, server_apps\n"
                "from tallygate.gateway.guarded_http import GuardedConfig, Guards\n"
                f"c = GuardedConfig(server_apps.hello, guards=Guards(), port={port}, "
                "loop='uvloop', log_level='warning', access_log=False)\n"
                "uvicorn.Server(c).run()"]
    if server == "granian":
        return [str(Path(sys.executable).with_name("granian")), "--interface", "asgi", "--loop",
                "uvloop", "--http", "1", "--workers", "1", "--port", str(port),
                "--http1-header-read-timeout", "10000", "--backpressure", "1024",
                "--log-level", "warning", "--no-ws", f"server_apps:{app}"]
    return [sys.executable, "-m", "hypercorn", "-k", "uvloop", "--bind",
            f"127.0.0.1:{port}", "--keep-alive", "5", "--read-timeout", "30",
            "--log-level", "warning", f"server_apps:{app}"]


def start(cmd: list[str], probe: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=BENCH, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_up(probe, proc)
    return proc


def plain_uvicorn(config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data["server"]["http"] = "uvicorn"
    config.write_text(yaml.safe_dump(data))


async def run_round(targets: dict[str, dict[str, tuple[str, dict[str, str]]]], requests: int,
                    results: dict[tuple[str, str], list[tuple[list[float], float]]]) -> None:
    for name, concurrency, stream in SCENARIOS:
        kind = name.split()[0]
        n = requests if concurrency > 1 else requests // 2
        for target, (url, headers) in targets[kind].items():
            lat, rps = await load(url, headers, requests=n, concurrency=concurrency,
                                  stream=stream)
            results.setdefault((name, target), []).append((lat, rps))


def report(results: dict[tuple[str, str], list[tuple[list[float], float]]],
           command: str) -> str:
    lines = [
        "# The HTTP server under the gateway: uvicorn, uvicorn + defences, granian, hypercorn",
        "", f"Command: `{command}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; simulator, servers and load generator share the "
        "cores. Medians over rounds; `vs uvicorn` = added p50 over today's server's.", "",
        "| scenario | server | p50 ms | p99 ms | req/s | added p50 ms | vs uvicorn |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, _, _ in SCENARIOS:
        rows = {t: v for (s, t), v in results.items() if s == name}
        p50 = {t: statistics.median(pct(lat, 0.5) for lat, _ in v) for t, v in rows.items()}
        base = p50.get("direct", 0.0)  # the hello app: its whole latency is the server
        for target, values in rows.items():
            p99 = statistics.median(pct(lat, 0.99) for lat, _ in values)
            rps = statistics.median(r for _, r in values)
            added = p50[target] - base
            today = p50["uvicorn"] - base
            ratio = f"{added / today:.2f}×" if target != "direct" and today > 0 else ""
            lines.append(f"| {name} | {target} | {p50[target]:.2f} | {p99:.2f} | {rps:,.0f} "
                         f"| {added:+.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    targets: dict[str, dict[str, tuple[str, dict[str, str]]]] = {"gateway": {}, "hello": {}}
    with tempfile.TemporaryDirectory(prefix="tg-bench-server-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            sim_port = free_port()
            sim_url = f"http://127.0.0.1:{sim_port}"
            procs.append(start([sys.executable, "-m", "tallygate", "sim", "--port",
                                str(sim_port)], sim_url + "/v1/models", dict(os.environ)))
            auth = {"authorization": "Bearer sk-sim"}
            targets["gateway"]["direct"] = (sim_url + "/v1/chat/completions", auth)
            for server in SERVERS:
                where = tmp / server.replace("+", "-")
                where.mkdir()
                config = gateway_config(where, sim_url)
                if server == "uvicorn":
                    plain_uvicorn(config)
                key = create_key(config)
                env = {**os.environ, "TALLYGATE_CONFIG": str(config),
                       "TALLYGATE_WORKERS": "1", "PYTHONPATH": str(BENCH)}
                for app in ("gateway", "hello"):
                    port = free_port()
                    url = f"http://127.0.0.1:{port}"
                    procs.append(start(server_command(server, config, port, app),
                                       url + ("/healthz" if app == "gateway" else "/"), env))
                    headers = {"authorization": f"Bearer {key}"} if app == "gateway" else {}
                    targets[app][server] = (url + "/v1/chat/completions", headers)
            results: dict[tuple[str, str], list[tuple[list[float], float]]] = {}
            for _ in range(args.rounds):
                asyncio.run(run_round(targets, args.requests, results))
        finally:
            stop(procs, timeout=10)
    text = report(results, ("python bench/server.py " + " ".join(sys.argv[1:])).strip())
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
