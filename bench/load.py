"""The gateway under sustained load against the bare aiohttp forwarder (the floor,
bench/floor.py), measured in the same run with wrk (bench/wrk.py):

1. `--rounds` alternating rounds of `--seconds` at 32 connections: floor, then the
   gateway (`tallygate serve`, its defaults: one worker owning its SQLite state, the
   SQLite ledger, the lean upstream; `server.loop_lag` on), each round's p99 and req/s
   side by side, with the simulator called directly as a third target for scale, and
   each proxy's CPU time per request (all its threads, user + system, from /proc);
   `--baseline REV` adds the gateway as of a git revision (its `src/` exported to a
   temporary directory), the same way: before and after in one run;
2. the same targets at 1 connection (`--rounds` rounds of 5 s): each one's p50, and what
   it adds to the simulator's (`direct`) in the same round;
3. event-loop stalls, on a second gateway process run with the stall sampler on
   (`--log-level debug`: the monitor samples the loop thread while a beat is late):
   one `--lag-seconds` run at 32 connections (saturated), then one as long paced to
   about 70 % of that rate (wrk's per-connection delay), each with the stall histogram
   (`tallygate_event_loop_stall_seconds`: the longest stall of each second), the
   longest single callback of each second (`tallygate_event_loop_callback_seconds`) and
   the stalls one callback caused (`tallygate_event_loop_blocked_total`) read from
   /metrics before and after, and what the debug log named.

Simulator, floor, gateway and wrk share the machine's cores.

    apt-get install wrk
    python bench/load.py [--rounds 3] [--seconds 10] [--lag-seconds 60]
        [--baseline REV] [--out bench/results/load.md]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import orjson
import yaml
from output import command_line, machine, stop
from overhead import BODY, create_key, free_port, gateway_config, spawn, wait_up
from wrk import WrkResult, require_wrk, run_wrk

ROOT = Path(__file__).resolve().parents[1]
STALL = "tallygate_event_loop_stall_seconds"
CALLBACK = "tallygate_event_loop_callback_seconds"
PACED = 0.7  # the paced stall run's rate, a fraction of the saturated one's


def stall_buckets(url: str) -> dict[str, float]:
    """le → cumulative count of the stall histogram, plus `count` and `stalls`."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {le: float(v) for le, v in re.findall(
        rf'^{STALL}_bucket{{le="([^"]+)"}} ([\d.e+]+)$', text, re.M)}
    count = re.search(rf"^{STALL}_count ([\d.e+]+)$", text, re.M)
    stalls = re.search(r"^tallygate_event_loop_stalls_total ([\d.e+]+)$", text, re.M)
    out["count"] = float(count.group(1)) if count else 0.0
    out["stalls"] = float(stalls.group(1)) if stalls else 0.0
    blocked = re.search(r"^tallygate_event_loop_blocked_total ([\d.e+]+)$", text, re.M)
    out["blocked"] = float(blocked.group(1)) if blocked else 0.0
    for le, v in re.findall(rf'^{CALLBACK}_bucket{{le="([^"]+)"}} ([\d.e+]+)$', text, re.M):
        out["cb:" + le] = float(v)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def export_revision(rev: str, into: Path) -> Path:
    """`src/` of a git revision, for PYTHONPATH."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _per_bucket(before: dict[str, float], after: dict[str, float], prefix: str
                ) -> dict[str, float]:
    """le → seconds (intervals) that fell in that bucket during a run."""
    out, previous = {}, 0.0
    for key, value in after.items():
        if not key.startswith(prefix) or key[len(prefix):] in ("count", "stalls", "blocked") \
                or (prefix == "" and key.startswith("cb:")):
            continue
        cumulative = value - before.get(key, 0.0)
        out[key[len(prefix):]] = cumulative - previous
        previous = cumulative
    return out


def lag_table(runs: list[tuple[str, dict[str, float], dict[str, float]]]) -> list[str]:
    """Per bucket: seconds whose longest stall / longest single callback fell there."""
    head = " | ".join(f"{name}: longest stall | {name}: longest callback"
                      for name, _, _ in runs)
    lines = [f"| in a second | {head} |", "|---|" + "---:|---:|" * len(runs)]
    stall = [_per_bucket(b, a, "") for _, b, a in runs]
    cb = [_per_bucket(b, a, "cb:") for _, b, a in runs]
    for le in stall[0]:
        label = "≤ " + (f"{float(le) * 1000:g} ms" if le != "+Inf" else "∞")
        lines.append(f"| {label} | " + " | ".join(
            f"{s.get(le, 0):.0f} | {c.get(le, 0):.0f}" for s, c in zip(stall, cb, strict=True))
            + " |")
    return lines


def named(log: Path, start: int = 0) -> tuple[int, int, list[str]]:
    """(stall lines from byte `start` on, of which one callback, the most frequent
    callbacks among those)."""
    with log.open("rb") as fh:
        fh.seek(start)
        text = fh.read().decode(errors="replace")
    stalls = re.findall(r"event loop stalled [\d.]+ ms; running: (.*)", text)
    single = [line.split(": ", 1)[1] for line in stalls if line.startswith("one callback")]
    where: dict[str, int] = {}
    for line in single:
        top = line.split(" <- ")[0]
        where[top] = where.get(top, 0) + 1
    top = sorted(where.items(), key=lambda kv: -kv[1])[:5]
    return len(stalls), len(single), [f"{n} × {w}" for w, n in top]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--lag-seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--baseline", default=None,
                        help="a git revision whose gateway runs beside this one")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    require_wrk()
    procs: list[subprocess.Popen[bytes]] = []
    rounds: list[dict[str, WrkResult]] = []
    cpu: dict[str, list[float]] = {}  # µs of CPU per request, per round
    with tempfile.TemporaryDirectory(prefix="tg-bench-load-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            sim_port, floor_port, gw_port = free_port(), free_port(), free_port()
            sim_url = f"http://127.0.0.1:{sim_port}"
            procs.append(spawn([sys.executable, "-m", "tallygate", "sim", "--port",
                                str(sim_port)], sim_url + "/v1/models"))
            floor_url = f"http://127.0.0.1:{floor_port}"
            procs.append(spawn([sys.executable, str(ROOT / "bench" / "floor.py"),
                                "--upstream", sim_url, "--port", str(floor_port)],
                               floor_url + "/"))
            config = gateway_config(tmp, sim_url)
            policy = yaml.safe_load(config.read_text())
            policy["server"]["loop_lag"] = {"enabled": True}
            config.write_text(yaml.safe_dump(policy))
            key = create_key(config)
            gw_url = f"http://127.0.0.1:{gw_port}"
            procs.append(spawn([sys.executable, "-m", "tallygate", "serve", "--config",
                                str(config), "--port", str(gw_port)], gw_url + "/healthz"))
            targets = {
                "direct": (sim_url, {"authorization": "Bearer sk-sim"}),
                "floor": (floor_url, {"authorization": "Bearer sk-sim"}),
                "gateway": (gw_url, {"authorization": f"Bearer {key}"}),
            }
            pids = {"floor": procs[1].pid, "gateway": procs[2].pid}
            if args.baseline:
                old = tmp / "baseline"
                old.mkdir()
                env = {**os.environ, "PYTHONPATH": str(export_revision(args.baseline, old))}
                old_config = gateway_config(old, sim_url, name="baseline")
                old_key = subprocess.run(
                    [sys.executable, "-m", "tallygate", "keys", "create", "--config",
                     str(old_config), "--user", "bench", "--plan", "bench", "--json"],
                    check=True, capture_output=True, env=env).stdout
                old_url = f"http://127.0.0.1:{free_port()}"
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tallygate", "serve", "--config", str(old_config),
                     "--port", old_url.rsplit(":", 1)[1]], env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                wait_up(old_url + "/healthz", procs[-1])
                targets["baseline"] = (old_url, {
                    "authorization": f"Bearer {orjson.loads(old_key)['key']}"})
                pids["baseline"] = procs[-1].pid
            path = "/v1/chat/completions"
            common = {"content-type": "application/json"}
            for url, headers in targets.values():  # warm-up: connections, caches
                run_wrk(url + path, BODY, {**common, **headers}, connections=4, seconds=2)
            for _ in range(args.rounds):
                found = {}
                for name, (url, headers) in targets.items():
                    before = cpu_seconds(pids[name]) if name in pids else 0.0
                    found[name] = run_wrk(url + path, BODY, {**common, **headers},
                                          connections=args.connections, seconds=args.seconds)
                    if name in pids:
                        cpu.setdefault(name, []).append(
                            (cpu_seconds(pids[name]) - before) / found[name].requests * 1e6)
                rounds.append(found)
            single: list[dict[str, WrkResult]] = []
            for _ in range(args.rounds):
                single.append({name: run_wrk(url + path, BODY, {**common, **headers},
                                             connections=1, seconds=5)
                               for name, (url, headers) in targets.items()})
            lag_dir = tmp / "lag"  # (its own state: one process owns a state file)
            lag_dir.mkdir()
            lag_config = gateway_config(lag_dir, sim_url)
            lag_policy = yaml.safe_load(lag_config.read_text())
            lag_policy["server"]["loop_lag"] = {"enabled": True}
            lag_config.write_text(yaml.safe_dump(lag_policy))
            auth = {**common, "authorization": f"Bearer {create_key(lag_config)}"}
            lag_url = f"http://127.0.0.1:{free_port()}"
            lag_log = lag_dir / "gateway.log"
            procs.append(spawn([sys.executable, "-m", "tallygate", "serve", "--config",
                                str(lag_config), "--port", lag_url.rsplit(":", 1)[1],
                                "--log-level", "debug"], lag_url + "/healthz",
                               stderr=lag_log))
            run_wrk(lag_url + path, BODY, auth, connections=4, seconds=2)  # warm-up
            lag_runs = []
            before = stall_buckets(lag_url)
            lag_run = run_wrk(lag_url + path, BODY, auth, connections=args.connections,
                              seconds=args.lag_seconds)
            after = stall_buckets(lag_url)
            lag_runs.append(("saturated", before, after, lag_run, named(lag_log)))
            # Paced: each connection's cycle is its latency plus the delay, so the delay
            # is the cycle at PACED × the saturated rate less the one-connection p50.
            cycle_ms = args.connections / (PACED * lag_run.rps) * 1000
            low_p50 = statistics.median(f["gateway"].p50 for f in single)
            start = lag_log.stat().st_size
            before = stall_buckets(lag_url)
            paced = run_wrk(lag_url + path, BODY, auth, connections=args.connections,
                            seconds=args.lag_seconds,
                            delay_ms=max(1.0, cycle_ms - low_p50))
            after = stall_buckets(lag_url)
            lag_runs.append((f"paced ({paced.rps / lag_run.rps:.0%})", before, after, paced,
                             named(lag_log, start)))
        finally:
            stop(procs, timeout=15)
    lines = [
        "# Sustained load: the gateway against the bare aiohttp forwarder (wrk)", "",
        f"Command: `{command_line('load.py')}`",
        f"{machine()}; simulator, floor, gateway and wrk (1 thread, "
        f"{args.connections} connections) share the cores. Rounds alternate the targets; "
        "`direct` is the simulator called without a proxy. Errors: non-2xx answers, "
        "socket errors and timeouts.", "",
        "| round | floor p50 ms | floor p99 ms | gateway p50 ms | gateway p99 ms | "
        "p99 vs floor | floor req/s | gateway req/s | req/s vs floor | direct req/s | "
        "gateway max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, found in enumerate(rounds, 1):
        fl, gw, direct = found["floor"], found["gateway"], found["direct"]
        errors = sum(r.errors for r in found.values())
        lines.append(
            f"| {i} | {fl.p50:.2f} | {fl.p99:.2f} | {gw.p50:.2f} | {gw.p99:.2f} | "
            f"{gw.p99 / fl.p99:.2f}× | {fl.rps:,.0f} | {gw.rps:,.0f} | "
            f"{gw.rps / fl.rps:.2f}× | {direct.rps:,.0f} | {gw.max:.1f} | {errors} |")
    lines += ["", "CPU time per request of each proxy process (all threads, user + system) "
              "and its rate, per round" + (f"; `baseline` is the gateway at `{args.baseline}`"
                                          if args.baseline else "") + ":", "",
              "| round | " + " | ".join(f"{n} µs/req | {n} req/s" for n in cpu) + " |",
              "|---|" + "---:|---:|" * len(cpu)]
    for i, found in enumerate(rounds, 1):
        lines.append(f"| {i} | " + " | ".join(
            f"{cpu[n][i - 1]:.0f} | {found[n].rps:,.0f}" for n in cpu) + " |")
    if args.baseline:
        per_core = [old / new for old, new in zip(cpu["baseline"], cpu["gateway"],
                                                  strict=True)]
        rps = [found["gateway"].rps / found["baseline"].rps for found in rounds]
        lines += ["", f"Against the baseline: req/s {statistics.median(rps):.2f}× and "
                  f"requests per CPU-second {statistics.median(per_core):.2f}× (medians over "
                  "the rounds)."]
    names = [n for n in targets if n != "direct"]
    lines += ["", "## One connection: p50 and what each proxy adds to the simulator's", "",
              "| round | direct p50 ms | " + " | ".join(f"{n} p50 ms | {n} added ms"
                                                     for n in names) + " |",
              "|---|---:|" + "---:|---:|" * len(names)]
    for i, found in enumerate(single, 1):
        direct_p50 = found["direct"].p50
        lines.append(f"| {i} | {direct_p50:.3f} | " + " | ".join(
            f"{found[n].p50:.3f} | {found[n].p50 - direct_p50:+.3f}" for n in names) + " |")
    added = {n: statistics.median(f[n].p50 - f["direct"].p50 for f in single) for n in names}
    lines += ["", "Median added p50: " + ", ".join(f"{n} {v:+.3f} ms" for n, v in added.items())
              + f"; gateway / floor {added['gateway'] / added['floor']:.2f}×."]
    lines += [
        "", f"## Event-loop stalls: {args.lag_seconds:g} s saturated, then {args.lag_seconds:g}"
        f" s paced to about {PACED:.0%} of that rate ({args.connections} connections)", "",
        "A second gateway process, run with `--log-level debug`: the stall monitor then "
        "samples the loop thread every 1 ms while a beat is late, and tells one callback "
        "holding the loop from a saturated loop running many short ones. A stall: how "
        "late a 1 ms timer fired. A callback's length: the time between the first and the "
        "last sample that found the loop in it (a lower bound).", "",
        "| run | req/s | p50 ms | p99 ms | max ms | errors | stalls > 5 ms | "
        "of them one callback > 5 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, before, after, run, _ in lag_runs:
        lines.append(f"| {name} | {run.rps:,.0f} | {run.p50:.2f} | {run.p99:.2f} | "
                     f"{run.max:.1f} | {run.errors} | {after['stalls'] - before['stalls']:.0f}"
                     f" | {after['blocked'] - before['blocked']:.0f} |")
    lines += ["", *lag_table([(n, b, a) for n, b, a, _, _ in lag_runs])]
    for name, _, _, _, (logged, single_n, where) in lag_runs:
        lines += ["", f"{name}: {logged} stall lines logged, {single_n} naming one callback"
                  + (": " + "; ".join(where) if where else ".")]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
