"""The serving stack, side by side in one run with wrk (bench/wrk.py): the same gateway
(its own SQLite state and ledger, the simulator upstream) under

- `serve`: uvicorn (uvloop, httptools) with the connection defences (gateway/
  guarded_http.py), today's default;
- `serve`, `server.http: uvicorn`: the same without the defences;
- granian ASGI and granian RSGI (bench/server_apps.py: the gateway behind a small
  RSGI adapter), one worker each;
- `serve --workers 2` on one SQLite state file (shared mode) and on Redis;

and a bare hello app under uvicorn, uvicorn + defences, granian ASGI and granian RSGI
(the server's own cost). At 1 connection the p50 is the figure, at 32 the rate and p99;
rounds alternate the targets. granian has a header read timeout and a backpressure cap,
but no body deadline, no connection cap answering 503 and no 431 (docs/gateway.md).

    apt-get install wrk; pip install granian   # compared here only
    python bench/stack.py [--rounds 2] [--seconds 5] [--out bench/results/stack.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from output import command_line, machine, stop
from overhead import BODY, create_key, free_port, gateway_config, wait_up
from wrk import WrkResult, require_wrk, run_wrk

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
from tests.support.servers import redis_server  # noqa: E402

GATEWAYS = ("serve", "serve, no defences", "granian asgi", "granian rsgi",
            "serve --workers 2, sqlite shared", "serve --workers 2, redis")
HELLOS = ("uvicorn", "uvicorn + defences", "granian asgi", "granian rsgi")


def granian(interface: str, app: str, port: int) -> list[str]:
    return [str(Path(sys.executable).with_name("granian")), "--interface", interface,
            "--loop", "uvloop", "--http", "1", "--workers", "1", "--port", str(port),
            "--http1-header-read-timeout", "10000", "--backpressure", "1024",
            "--log-level", "warning", "--no-ws", f"server_apps:{app}"]


def hello_command(server: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "server_apps:hello", "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
                "--no-access-log"]
    if server == "uvicorn + defences":
        return [sys.executable, "-c",
                "import uvicorn, server_apps\n"
                "from tallygate.gateway.guarded_http import GuardedConfig, Guards\n"
                f"c = GuardedConfig(server_apps.hello, guards=Guards(), port={port}, "
                "loop='uvloop', log_level='warning', access_log=False)\n"
                "uvicorn.Server(c).run()"]
    return granian(server.split()[1], "hello" if server.endswith("asgi") else "hello_rsgi",
                   port)


def gateway_command(name: str, config: Path, port: int) -> list[str]:
    if name.startswith("granian"):
        interface = name.split()[1]
        return granian(interface, "gateway" if interface == "asgi" else "gateway_rsgi", port)
    workers = ["--workers", "2"] if "--workers 2" in name else []
    return [sys.executable, "-m", "tallygate", "serve", "--config", str(config), "--port",
            str(port), *workers]


def start(cmd: list[str], probe: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=BENCH, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_up(probe, proc)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    require_wrk()
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[tuple[str, int], list[WrkResult]] = {}
    targets: dict[str, tuple[str, dict[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="tg-bench-stack-") as tmpdir, \
            redis_server() as redis:
        tmp = Path(tmpdir)
        try:
            sim_port = free_port()
            sim_url = f"http://127.0.0.1:{sim_port}"
            procs.append(start([sys.executable, "-m", "tallygate", "sim", "--port",
                                str(sim_port)], sim_url + "/v1/models", dict(os.environ)))
            for name in GATEWAYS:
                where = tmp / f"gw{GATEWAYS.index(name)}"
                where.mkdir()
                state = f"redis://127.0.0.1:{redis.port}/0" if "redis" in name else None
                config = gateway_config(where, sim_url, state=state)
                if name == "serve, no defences":
                    data = yaml.safe_load(config.read_text())
                    data["server"]["http"] = "uvicorn"
                    config.write_text(yaml.safe_dump(data))
                key = create_key(config)
                port = free_port()
                env = {**os.environ, "TALLYGATE_CONFIG": str(config),
                       "TALLYGATE_WORKERS": "1", "PYTHONPATH": str(BENCH)}
                procs.append(start(gateway_command(name, config, port),
                                   f"http://127.0.0.1:{port}/healthz", env))
                targets[f"gateway: {name}"] = (f"http://127.0.0.1:{port}/v1/chat/completions",
                                               {"authorization": f"Bearer {key}"})
            for name in HELLOS:
                port = free_port()
                env = {**os.environ, "PYTHONPATH": str(BENCH)}
                procs.append(start(hello_command(name, port), f"http://127.0.0.1:{port}/",
                                   env))
                targets[f"hello: {name}"] = (f"http://127.0.0.1:{port}/", {})
            common = {"content-type": "application/json"}
            for url, headers in targets.values():  # warm-up
                run_wrk(url, BODY, {**common, **headers}, connections=4, seconds=1)
            for _ in range(args.rounds):
                for connections in (1, 32):
                    for target, (url, headers) in targets.items():
                        found = run_wrk(url, BODY, {**common, **headers},
                                        connections=connections, seconds=args.seconds)
                        results.setdefault((target, connections), []).append(found)
        finally:
            stop(procs, timeout=15)
    lines = [
        "# The serving stack: one gateway under each server (wrk)", "",
        f"Command: `{command_line('stack.py')}`",
        f"{machine()}; simulator, servers, Redis and wrk (1 thread) share "
        f"the cores. Medians over {args.rounds} rounds of {args.seconds:g} s; `vs serve` "
        "compares with today's `serve` (uvicorn + defences, one worker) in the same run "
        "(the hello rows with uvicorn + defences).", "",
        "| target | c=1 p50 ms | c=1 vs serve | c=32 req/s | c=32 vs serve | c=32 p99 ms "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def med(target: str, connections: int, what: str) -> float:
        return statistics.median(getattr(r, what) for r in results[(target, connections)])

    for target in targets:
        base = "gateway: serve" if target.startswith("gateway") else "hello: uvicorn + defences"
        p50, rps = med(target, 1, "p50"), med(target, 32, "rps")
        errors = sum(r.errors for c in (1, 32) for r in results[(target, c)])
        lines.append(f"| {target} | {p50:.2f} | {p50 / med(base, 1, 'p50'):.2f}× | "
                     f"{rps:,.0f} | {rps / med(base, 32, 'rps'):.2f}× | "
                     f"{med(target, 32, 'p99'):.2f} | {errors} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
