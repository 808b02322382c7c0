"""Soak: `tallygate serve` (its defaults: one worker owning its SQLite state, the
SQLite ledger) at a steady rate for minutes, the traffic mixed — OpenAI chat
completions, OpenAI streams (a third of them dropped by the client after the first
chunk) and Anthropic messages — with the gateway's resident memory and open
descriptors sampled every 10 s. At the end the ledger is compared with what the
clients saw: one row per answered call (by the id each answer carried), its status,
and its tokens where the answer reported them.

Every request carries its own X-Tallygate-Request-Id (`soak-N`), so the ledger is
matched call by call, answered or not: each answer the client saw has its row with the
same status and tokens; a call the client gave up on (its timeout) or left (a dropped
stream) has a 499 row, or a 200 one when the answer had been sent before the client
left; any other row is a problem.

The load is open-loop (a request every 1/rate s, whatever the answers do), from one
aiohttp client on uvloop on the same machine; it stops by itself after `--minutes`. The
simulator generates 800 tokens/s (a 16-token reply takes ~20 ms), so dropped streams
are cut mid-way. `--target direct` sends the same mix to the simulator (no gateway): the
rate the load generator and the simulator sustain on their own. `--calibrate 300,500`
runs 20 s at each rate against the target and prints what it sustained, to pick the
soak's rate (client p99 bounded, every call answered).

    python bench/soak.py [--minutes 10] [--rate 1000] [--out bench/results/soak.md]
    python bench/soak.py --calibrate 400,600,800,1000 [--target direct]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import uvloop
import yaml
from output import command_line, machine, stop
from overhead import create_key, free_port, gateway_config, spawn

HELLO = [{"role": "user", "content": "Say hello to the soak test."}]
CHAT = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 16, "messages": HELLO})
STREAM = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 16, "messages": HELLO,
                       "stream": True, "stream_options": {"include_usage": True}})
MESSAGES = orjson.dumps({"model": "claude-haiku-4-5", "max_tokens": 16, "messages": HELLO})
DROPPED = -1  # a stream the client left: 499 in the ledger (200 if it had ended already)
SAMPLE_EVERY = 10.0
WARM_UP = 60.0  # seconds of traffic before the memory baseline
SETTLE = 5.0  # seconds before latencies count (the first calls open connections, warm
# caches: the first half second's calls wait ~0.8 s)


GAVE_UP = -2  # the client's timeout: 499 in the ledger (200 if the answer was on its way)
CLIENT_TIMEOUT = 30.0


@dataclass
class Seen:
    """What the clients saw, per client request id (`soak-N`)."""

    calls: dict[str, tuple[int, int | None, int | None]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # id → why no answer
    latencies: list[float] = field(default_factory=list)  # of calls sent after SETTLE
    settled_at: float = 0.0  # perf_counter after which latencies count


def rss_and_fds(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def one(session: aiohttp.ClientSession, base: str, key: str, n: int,
              seen: Seen) -> None:
    kind = ("chat", "stream", "messages", "chat", "stream-drop", "chat", "messages",
            "stream", "chat", "chat")[n % 10]
    seen.kinds[kind] = seen.kinds.get(kind, 0) + 1
    rid = f"soak-{n}"
    started = time.perf_counter()
    try:
        if kind == "messages":
            headers = {"x-api-key": key, "anthropic-version": "2023-06-01",
                       "content-type": "application/json", "x-tallygate-request-id": rid}
            async with session.post(base + "/v1/messages", data=MESSAGES,
                                    headers=headers) as resp:
                body = orjson.loads(await resp.read())
                usage = body.get("usage") or {}
                seen.calls[rid] = (resp.status, usage.get("input_tokens"),
                                   usage.get("output_tokens"))
        elif kind == "chat":
            headers = {"authorization": f"Bearer {key}", "content-type": "application/json",
                       "x-tallygate-request-id": rid}
            async with session.post(base + "/v1/chat/completions", data=CHAT,
                                    headers=headers) as resp:
                body = orjson.loads(await resp.read())
                usage = body.get("usage") or {}
                seen.calls[rid] = (resp.status, usage.get("prompt_tokens"),
                                   usage.get("completion_tokens"))
        else:
            headers = {"authorization": f"Bearer {key}", "content-type": "application/json",
                       "x-tallygate-request-id": rid}
            async with session.post(base + "/v1/chat/completions", data=STREAM,
                                    headers=headers) as resp:
                if kind == "stream-drop":
                    await resp.content.readany()  # the first chunk, then gone
                    resp.close()
                    seen.calls[rid] = (DROPPED, None, None)
                    return
                raw = await resp.read()  # (only the usage event is parsed: the load
                at = raw.rfind(b'data: {"')  # generator must stay cheap)
                while at >= 0 and b'"usage":{' not in raw[at:raw.find(b"\n", at)]:
                    at = raw.rfind(b'data: {"', 0, at)
                usage = {}
                if at >= 0:
                    usage = orjson.loads(raw[at + 6:raw.find(b"\n", at)]).get("usage") or {}
                seen.calls[rid] = (resp.status, usage.get("prompt_tokens"),
                                   usage.get("completion_tokens"))
        if started >= seen.settled_at:
            seen.latencies.append(time.perf_counter() - started)
    except TimeoutError:
        seen.failures[rid] = "timeout"
    except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
        seen.failures[rid] = type(exc).__name__


async def drive(base: str, key: str, pid: int | None, *, seconds: float, rate: float
                ) -> tuple[Seen, list[tuple[float, int, int]], float]:
    """Open-loop traffic for `seconds`; the gateway's (`pid`) memory and descriptors
    sampled meanwhile."""
    seen = Seen()
    samples: list[tuple[float, int, int]] = []
    tasks: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                     timeout=timeout) as session:
        start = time.perf_counter()
        seen.settled_at = start + SETTLE
        next_sample = start
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            if now >= next_sample and pid is not None:
                samples.append((now - start, *rss_and_fds(pid)))
                next_sample += SAMPLE_EVERY
            due = start + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.ensure_future(one(session, base, key, n, seen))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        sent_for = time.perf_counter() - start
        await asyncio.gather(*tasks)
        if pid is not None:
            samples.append((time.perf_counter() - start, *rss_and_fds(pid)))
    return seen, samples, n / sent_for


def ledger_rows(path: Path) -> tuple[dict[str, list[tuple[int, int, int, str | None]]],
                                     list[int]]:
    """Each client request id's rows (status, input, output tokens, error code), and the
    calls' latencies in the gateway (ms, admission to the end of the call)."""
    db = sqlite3.connect(path)
    try:
        found = db.execute("SELECT client_request_id, status, input_tokens, output_tokens, "
                           "error_code, latency_ms FROM calls").fetchall()
    finally:
        db.close()
    rows: dict[str, list[tuple[int, int, int, str | None]]] = {}
    for rid, st, inp, out, code, _ in found:
        rows.setdefault(rid, []).append((st, inp, out, code))
    return rows, sorted(ms for *_, ms in found)


@dataclass
class Reconciled:
    problems: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # what the client saw → rows

    def count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1


def reconcile(seen: Seen, rows: dict[str, list[tuple[int, int, int, str | None]]]
              ) -> Reconciled:
    """Every call the client made against the ledger, by its client request id."""
    out = Reconciled()
    for rid in rows.keys() - seen.calls.keys() - seen.failures.keys():
        out.problems.append(f"{rid}: {len(rows[rid])} ledger rows for a call never made")
    for rid, why in seen.failures.items():
        found = rows.get(rid, [])
        if len(found) > 1:
            out.problems.append(f"{rid}: {len(found)} rows")
        elif not found:
            out.count(f"client {why}, no row (never admitted)")
        elif found[0][0] == 499:
            out.count(f"client {why}, 499 {found[0][3]}")
        elif found[0][0] == 200 and why == "timeout":
            out.count("client timeout, 200 (the answer was on its way)")
        else:
            out.problems.append(f"{rid}: client {why}, status {found[0][0]} in the ledger")
    for rid, (status, inp, tokens_out) in seen.calls.items():
        found = rows.get(rid, [])
        if len(found) != 1:
            out.problems.append(f"{rid}: {len(found)} rows for an answered call")
            continue
        row = found[0]
        if status == DROPPED:
            if row[0] == 499:
                out.count(f"stream dropped, 499 {row[3]}")
            elif row[0] == 200:
                out.count("stream dropped, 200 (it had ended before the drop)")
            else:
                out.problems.append(f"{rid}: a dropped stream recorded as {row[0]}")
        elif row[0] != status:
            out.problems.append(f"{rid}: status {row[0]} in the ledger, {status} seen")
        elif inp is not None and (row[1], row[2]) != (inp, tokens_out):
            out.problems.append(f"{rid}: tokens {row[1:3]} in the ledger, "
                                f"{(inp, tokens_out)} seen")
        else:
            out.count(f"answered {status}, same status and tokens")
    return out


def pct_ms(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 if ordered else 0.0


def start_sim(procs: list[subprocess.Popen[bytes]]) -> str:
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    # Replies of 16 tokens at 800 tokens/s: ~20 ms a call, so a dropped stream is
    # dropped mid-way (an instant reply would have ended before the drop).
    procs.append(spawn([sys.executable, "-m", "tallygate", "sim", "--port",
                        str(sim_port), "--tokens-per-second", "800"],
                       sim_url + "/v1/models"))
    return sim_url


def start_gateway(tmp: Path, sim_url: str, procs: list[subprocess.Popen[bytes]],
                  debug: Path | None) -> tuple[str, str]:
    """The gateway's base URL and a key."""
    gw_port = free_port()
    config = gateway_config(tmp, sim_url)
    policy = yaml.safe_load(config.read_text())
    policy["providers"]["anthropic"] = {"protocol": "anthropic", "base_url": sim_url,
                                        "api_key": "sk-sim"}
    policy["server"]["loop_lag"] = {"enabled": True}
    config.write_text(yaml.safe_dump(policy))
    key = create_key(config)
    base = f"http://127.0.0.1:{gw_port}"
    procs.append(spawn([sys.executable, "-m", "tallygate", "serve", "--config",
                        str(config), "--port", str(gw_port),
                        *(["--log-level", "debug"] if debug else [])],
                       base + "/healthz", stderr=debug))
    return base, key


def calibrate(rates: list[float], target: str) -> None:
    """20 s at each rate: what the target sustained."""
    lines = [f"Calibration against `{target}` (20 s a rate, the soak's mix):", "",
             "| asked req/s | sent req/s | answered | no answer | client p50 ms | "
             "client p99 ms |", "|---:|---:|---:|---:|---:|---:|"]
    for rate in rates:
        procs: list[subprocess.Popen[bytes]] = []
        with tempfile.TemporaryDirectory(prefix="tg-bench-soak-") as tmpdir:
            try:
                sim_url = start_sim(procs)
                if target == "direct":
                    base, key = sim_url, "sk-sim"
                else:
                    base, key = start_gateway(Path(tmpdir), sim_url, procs, None)
                seen, _, achieved = uvloop.run(drive(base, key, None, seconds=20, rate=rate))
            finally:
                stop(procs, timeout=60)
        lat = sorted(seen.latencies)
        lines.append(f"| {rate:,.0f} | {achieved:,.0f} | {len(seen.calls):,} | "
                     f"{len(seen.failures):,} | {pct_ms(lat, 0.5):.1f} | "
                     f"{pct_ms(lat, 0.99):.1f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--target", choices=("gateway", "direct"), default="gateway")
    parser.add_argument("--calibrate", default=None,
                        help="comma-separated rates: 20 s at each, then stop")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--debug", type=Path, default=None,
                        help="the gateway's debug log (stalls and what ran) to this file")
    args = parser.parse_args()
    if args.calibrate:
        calibrate([float(r) for r in args.calibrate.split(",")], args.target)
        return
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="tg-bench-soak-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            sim_url = start_sim(procs)
            base, key = start_gateway(tmp, sim_url, procs, args.debug)
            gateway = procs[-1]
            seen, samples, achieved = uvloop.run(drive(
                base, key, gateway.pid, seconds=args.minutes * 60, rate=args.rate))
            time.sleep(1.0)  # (the ledger writer commits every 50 ms)
            gateway.send_signal(signal.SIGTERM)  # stops the gateway's way: flushed
            gateway.wait(timeout=60)
            rows, inside = ledger_rows(tmp / "ledger.db")
        finally:
            stop(procs, timeout=60)
    found = reconcile(seen, rows)
    problems = found.problems
    base_rss = next((rss for t, rss, _ in samples if t >= WARM_UP), samples[0][1])
    last_rss = samples[-1][1]
    fds = [f for t, _, f in samples if t >= WARM_UP] or [samples[-1][2]]
    lat = sorted(seen.latencies)
    lines = [
        "# Soak: a steady mixed load for minutes", "",
        f"Command: `{command_line('soak.py')}`",
        f"{machine()}; simulator, gateway and the aiohttp load generator "
        "share the cores. Traffic: 5/10 chat completions, 3/10 streams (1 in 3 dropped "
        "after its first chunk), 2/10 Anthropic messages.", "",
        f"- Rate: {achieved:,.0f} req/s asked for {args.minutes:g} min "
        f"({sum(seen.kinds.values()):,} calls: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(seen.kinds.items())) + f"); "
        f"{len(seen.failures)} without an answer. Latency p50 {pct_ms(lat, 0.5):.1f} ms,"
        f" p99 {pct_ms(lat, 0.99):.1f} ms at the client (whole answers, "
        f"streams to their end; calls sent after the first {SETTLE:g} s); in the gateway "
        f"(the ledger's latency_ms) p50 "
        f"{inside[len(inside) // 2]} ms, p99 {inside[int(len(inside) * 0.99)]} ms.",
        f"- Resident memory after {WARM_UP:g} s of warm-up {base_rss / 2**20:.1f} MiB, at "
        f"the end {last_rss / 2**20:.1f} MiB: {(last_rss - base_rss) / base_rss:+.1%} "
        "(target < 5 %).",
        f"- Open descriptors after warm-up: {min(fds)} to {max(fds)} (first {fds[0]}, last "
        f"{fds[-1]}).",
        f"- Ledger: {sum(len(v) for v in rows.values()):,} rows for "
        f"{len(seen.calls) + len(seen.failures):,} calls made; "
        + ("every call reconciled (below)." if not problems else
           f"{len(problems)} problems: " + "; ".join(problems[:5])),
        "", "| what the client saw → the ledger's row | calls |", "|---|---:|",
        *(f"| {what} | {n:,} |" for what, n in sorted(found.outcomes.items())),
        "", "| t s | RSS MiB | descriptors |", "|---:|---:|---:|",
        *(f"| {t:.0f} | {rss / 2**20:.1f} | {f} |" for t, rss, f in samples),
        "", f"Median RSS after warm-up: "
        f"{statistics.median(r for t, r, _ in samples if t >= WARM_UP) / 2**20:.1f} MiB."
        if any(t >= WARM_UP for t, _, _ in samples) else "",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if problems or seen.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
