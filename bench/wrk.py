"""wrk (the C load generator, Debian package `wrk`) driven from the benchmarks: a POST
of a fixed JSON body with fixed headers, its latency percentiles and rate parsed.

wrk costs far less CPU per request than a Python load generator, which matters on a
2-core machine where the load generator, the simulator and the process under test
share the cores. `apt-get install wrk` installs it; `require_wrk()` says so when it is
missing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_TIME = r"([\d.]+)(us|ms|s)"


@dataclass(frozen=True)
class WrkResult:
    p50: float  # ms
    p99: float
    max: float
    rps: float
    requests: int
    errors: int  # non-2xx answers, socket errors and timeouts


def require_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        sys.exit("this benchmark drives wrk: `apt-get install wrk` (Debian/Ubuntu)")
    return found


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def _script(body: bytes, headers: dict[str, str], delay_ms: float | None) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    lines += [f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in headers.items()]
    if delay_ms is not None:  # each connection waits this long before its next request
        lines.append(f"function delay() return {round(delay_ms)} end")  # (whole ms)
    return "\n".join(lines) + "\n"


def run_wrk(url: str, body: bytes, headers: dict[str, str], *, connections: int,
            seconds: float, threads: int = 1, delay_ms: float | None = None) -> WrkResult:
    """One wrk run against `url`; stops by itself after `seconds`. `delay_ms` paces
    each connection (a pause before each request): a rate below saturation."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_script(body, headers, delay_ms))
        script = fh.name
    try:
        out = subprocess.run(
            [require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s",
             "--latency", "-s", script, url],
            capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    finally:
        Path(script).unlink(missing_ok=True)
    pct = {m[0]: _ms(m[1], m[2]) for m in re.findall(rf"^\s+(50|99)%\s+{_TIME}", out, re.M)}
    latency = re.search(rf"Latency\s+{_TIME}\s+{_TIME}\s+{_TIME}", out)
    requests = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (latency and requests and rps and len(pct) == 2):
        raise RuntimeError(f"unreadable wrk output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(bad.group(1)) if bad else 0
    return WrkResult(pct["50"], pct["99"], _ms(latency.group(5), latency.group(6)),
                     float(rps.group(1)), int(requests.group(1)), errors)
