"""Soak: `tallygate serve` (its defaults: one worker owning its SQLite state, the
SQLite ledger) at a steady rate for minutes, the traffic mixed — OpenAI chat
completions, OpenAI streams (a third of them dropped by the client after the first
chunk) and Anthropic messages — with the gateway's resident memory and open
descriptors sampled every 10 s. At the end the ledger is compared with what the
clients saw: one row per answered call (by the id each answer carried), its status,
and its tokens where the answer reported them.

The load is open-loop (a request every 1/rate s, whatever the answers do), from one
aiohttp client on the same machine; it stops by itself after `--minutes`. The simulator
generates 800 tokens/s (a 16-token reply takes ~20 ms), so dropped streams are cut
mid-way.

    python bench/soak.py [--minutes 10] [--rate 1000] [--out bench/results/soak.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
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
import yaml
from overhead import create_key, free_port, gateway_config, spawn

HELLO = [{"role": "user", "content": "Say hello to the soak test."}]
CHAT = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 16, "messages": HELLO})
STREAM = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 16, "messages": HELLO,
                       "stream": True, "stream_options": {"include_usage": True}})
MESSAGES = orjson.dumps({"model": "claude-haiku-4-5", "max_tokens": 16, "messages": HELLO})
DROPPED = -1  # a stream the client left: 499 in the ledger (200 if it had ended already)
SAMPLE_EVERY = 10.0
WARM_UP = 60.0  # seconds of traffic before the memory baseline


@dataclass
class Seen:
    """What the clients saw, per call id."""

    calls: dict[str, tuple[int, int | None, int | None]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    failures: int = 0  # no answer at all (connection error, timeout)
    latencies: list[float] = field(default_factory=list)


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
    started = time.perf_counter()
    try:
        if kind == "messages":
            headers = {"x-api-key": key, "anthropic-version": "2023-06-01",
                       "content-type": "application/json"}
            async with session.post(base + "/v1/messages", data=MESSAGES,
                                    headers=headers) as resp:
                body = orjson.loads(await resp.read())
                usage = body.get("usage") or {}
                seen.calls[resp.headers["x-tallygate-request-id"]] = (
                    resp.status, usage.get("input_tokens"), usage.get("output_tokens"))
        elif kind == "chat":
            headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
            async with session.post(base + "/v1/chat/completions", data=CHAT,
                                    headers=headers) as resp:
                body = orjson.loads(await resp.read())
                usage = body.get("usage") or {}
                seen.calls[resp.headers["x-tallygate-request-id"]] = (
                    resp.status, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        else:
            headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
            async with session.post(base + "/v1/chat/completions", data=STREAM,
                                    headers=headers) as resp:
                rid = resp.headers["x-tallygate-request-id"]
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
        seen.latencies.append(time.perf_counter() - started)
    except (TimeoutError, aiohttp.ClientError, KeyError, orjson.JSONDecodeError):
        seen.failures += 1


async def drive(base: str, key: str, pid: int, *, seconds: float, rate: float
                ) -> tuple[Seen, list[tuple[float, int, int]], float]:
    seen = Seen()
    samples: list[tuple[float, int, int]] = []
    tasks: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                     timeout=timeout) as session:
        start = time.perf_counter()
        next_sample = start
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            if now >= next_sample:
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
        samples.append((time.perf_counter() - start, *rss_and_fds(pid)))
    return seen, samples, n / sent_for


def ledger_rows(path: Path) -> tuple[dict[str, tuple[int, int, int]], list[int]]:
    """Each row's (status, input, output tokens), and the calls' latencies in the
    gateway (ms, admission to the end of the call)."""
    db = sqlite3.connect(path)
    try:
        found = db.execute("SELECT request_id, status, input_tokens, output_tokens, "
                           "latency_ms FROM calls").fetchall()
    finally:
        db.close()
    return ({rid: (st, inp, out) for rid, st, inp, out, _ in found},
            sorted(ms for *_, ms in found))


def compare(seen: Seen, rows: dict[str, tuple[int, int, int]]) -> list[str]:
    problems = []
    missing = [rid for rid in seen.calls if rid not in rows]
    extra = [rid for rid in rows if rid not in seen.calls]
    if missing:
        problems.append(f"{len(missing)} answered calls have no ledger row")
    if extra:
        problems.append(f"{len(extra)} ledger rows no client saw")
    for rid, (status, inp, out) in seen.calls.items():
        row = rows.get(rid)
        if row is None:
            continue
        if status == DROPPED:
            if row[0] not in (499, 200):
                problems.append(f"{rid}: a dropped stream recorded as {row[0]}")
        elif row[0] != status:
            problems.append(f"{rid}: status {row[0]} in the ledger, {status} seen")
        elif inp is not None and (row[1], row[2]) != (inp, out):
            problems.append(f"{rid}: tokens {row[1:]} in the ledger, {(inp, out)} seen")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--debug", type=Path, default=None,
                        help="the gateway's debug log (stalls and what ran) to this file")
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="tg-bench-soak-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            sim_port, gw_port = free_port(), free_port()
            sim_url = f"http://127.0.0.1:{sim_port}"
            # Replies of 16 tokens at 800 tokens/s: ~20 ms a call, so a dropped stream is
            # dropped mid-way (an instant reply would have ended before the drop).
            procs.append(spawn([sys.executable, "-m", "tallygate", "sim", "--port",
                                str(sim_port), "--tokens-per-second", "800"],
                               sim_url + "/v1/models"))
            config = gateway_config(tmp, sim_url)
            policy = yaml.safe_load(config.read_text())
            policy["providers"]["anthropic"] = {"protocol": "anthropic", "base_url": sim_url,
                                                "api_key": "sk-sim"}
            policy["server"]["loop_lag"] = {"enabled": True}
            config.write_text(yaml.safe_dump(policy))
            key = create_key(config)
            base = f"http://127.0.0.1:{gw_port}"
            gateway = spawn([sys.executable, "-m", "tallygate", "serve", "--config",
                             str(config), "--port", str(gw_port),
                             *(["--log-level", "debug"] if args.debug else [])],
                            base + "/healthz", stderr=args.debug)
            procs.append(gateway)
            seen, samples, achieved = asyncio.run(drive(
                base, key, gateway.pid, seconds=args.minutes * 60, rate=args.rate))
            time.sleep(1.0)  # (the ledger writer commits every 50 ms)
            gateway.send_signal(signal.SIGTERM)  # stops the gateway's way: flushed
            gateway.wait(timeout=60)
            rows, inside = ledger_rows(tmp / "ledger.db")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=15)
    problems = compare(seen, rows)
    dropped_ids = [rid for rid, (status, _, _) in seen.calls.items() if status == DROPPED]
    dropped = len(dropped_ids)
    dropped_499 = sum(1 for rid in dropped_ids if rows.get(rid, (0,))[0] == 499)
    base_rss = next((rss for t, rss, _ in samples if t >= WARM_UP), samples[0][1])
    last_rss = samples[-1][1]
    fds = [f for t, _, f in samples if t >= WARM_UP] or [samples[-1][2]]
    lat = sorted(seen.latencies)
    command = ("python bench/soak.py " + " ".join(sys.argv[1:])).strip()
    lines = [
        "# Soak: a steady mixed load for minutes", "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; simulator, gateway and the aiohttp load generator "
        "share the cores. Traffic: 5/10 chat completions, 3/10 streams (1 in 3 dropped "
        "after its first chunk), 2/10 Anthropic messages.", "",
        f"- Rate: {achieved:,.0f} req/s asked for {args.minutes:g} min "
        f"({sum(seen.kinds.values()):,} calls: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(seen.kinds.items())) + f"); "
        f"{seen.failures} without an answer. Latency p50 {lat[len(lat) // 2] * 1000:.1f} ms,"
        f" p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms at the client (whole answers, "
        f"streams to their end); in the gateway (the ledger's latency_ms) p50 "
        f"{inside[len(inside) // 2]} ms, p99 {inside[int(len(inside) * 0.99)]} ms.",
        f"- Resident memory after {WARM_UP:g} s of warm-up {base_rss / 2**20:.1f} MiB, at "
        f"the end {last_rss / 2**20:.1f} MiB: {(last_rss - base_rss) / base_rss:+.1%} "
        "(target < 5 %).",
        f"- Open descriptors after warm-up: {min(fds)} to {max(fds)} (first {fds[0]}, last "
        f"{fds[-1]}).",
        f"- Ledger: {len(rows):,} rows for {len(seen.calls):,} answered calls; "
        f"dropped streams recorded as 499: {dropped_499:,} of {dropped:,} (the others "
        "had ended before the drop reached the gateway: 200); "
        + ("every id, status and token count matches." if not problems else
           f"{len(problems)} problems: " + "; ".join(problems[:5])),
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
