"""The gateway's own Python per call, without network or server: the ASGI app driven
in-process with a canned upstream reply, with memory:// state, SQLite state in owner mode
(what a one-worker `serve` uses) and in shared mode (SQLite ledger and journal in all),
one call at a time. This is most of what
`bench/overhead.py` sees on top of the bare forwarder (the rest: the upstream client and
uvicorn).

    python bench/gateway_inprocess.py [--calls 5000] [--out bench/results/inprocess.md]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import BODY, create_key, gateway_config

from tallygate.config import load_policy
from tallygate.gateway.app import create_app
from tallygate.gateway.upstream import UpstreamResponse

REPLY = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": "Hello there, benchmark!"}}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 6, "total_tokens": 20}})


class CannedUpstream:
    """Transport answering every post at once with the same chat completion."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def post(self, url: str, body: bytes, headers: Any, *, timeout: float | None
                   ) -> UpstreamResponse:
        return UpstreamResponse(200, {"content-type": "application/json"}, REPLY)


async def measure(state: str | None, calls: int, *, sole_process: bool = True
                  ) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="tg-inproc-") as tmpdir:
        config = gateway_config(Path(tmpdir), "http://127.0.0.1:9")
        if state:
            data = yaml.safe_load(config.read_text())
            data["storage"]["state"] = state
            config.write_text(yaml.safe_dump(data))
        key = create_key(config)
        app = create_app(load_policy(config), sole_process=sole_process)
        app.upstream = CannedUpstream()  # type: ignore[assignment]
        inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        started = asyncio.Event()

        async def life_send(message: dict[str, Any]) -> None:
            started.set()

        await inbox.put({"type": "lifespan.startup"})
        life = asyncio.create_task(app({"type": "lifespan"}, inbox.get, life_send))
        await started.wait()
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"),
                             (b"authorization", f"Bearer {key}".encode())],
                 "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 1),
                 "client": ("127.0.0.1", 2)}
        message = {"type": "http.request", "body": BODY, "more_body": False}
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return message

        async def send(out: dict[str, Any]) -> None:
            if out["type"] == "http.response.start":
                statuses.append(out["status"])

        for _ in range(300):  # warm-up: caches, the inline store connection
            await app(scope, receive, send)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await app(scope, receive, send)
            times.append(time.perf_counter() - t0)
            # Paced like one client through the real server (~1,000 calls/s): the SQLite
            # store then runs its transactions inline, as it does in bench/overhead.py.
            await asyncio.sleep(0.0005)
        if set(statuses) != {200}:
            raise RuntimeError(f"unexpected statuses {set(statuses)}")
        await inbox.put({"type": "lifespan.shutdown"})
        await life
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for name, state, sole in (("memory://", "memory://", True),
                              ("sqlite, owner mode (serve's default)", None, True),
                              ("sqlite, shared mode", None, False)):
        times = sorted(asyncio.run(measure(state, args.calls, sole_process=sole)))
        p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
        rows.append(f"| {name} | {args.calls} | {statistics.mean(times) * 1e6:.0f} | "
                    f"{p50 * 1e6:.0f} | {p99 * 1e6:.0f} |")
    text = "\n".join([
        "# The gateway's own Python per call (in-process)",
        "",
        f"Command: `python bench/gateway_inprocess.py --calls {args.calls}`",
        f"Machine: {platform.machine()}, Python {platform.python_version()}. The ASGI app "
        "driven directly (no server, no network), canned upstream reply, one call at a "
        "time, paced at about 1,000 calls/s; SQLite ledger + journal in every row.",
        "",
        "| state | calls | mean µs | p50 µs | p99 µs |",
        "|---|---|---:|---:|---:|",
        *rows,
    ]) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
