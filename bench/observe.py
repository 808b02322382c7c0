"""Per-call cost of the observability recorders on the request path, with alerts on and a
webhook that never answers (the case that must not slow calls).

    python bench/observe.py [--rows 50000]

Prints a markdown table: microseconds per record() for each recorder set, measured on an
event loop where the alert engine evaluates every 50 ms and its webhook receiver hangs."""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from typing import Any

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from tallygate.config import Policy
from tallygate.core.catalog import Catalog
from tallygate.engine import MemoryRecorder
from tallygate.ledger import open_ledger
from tallygate.observe.alerts import AlertEngine
from tallygate.observe.figures import LedgerFigures
from tallygate.observe.metrics import MetricsRecorder
from tallygate.observe.tracing import TracingRecorder
from tallygate.observe.webhooks import WebhookSender
from tallygate.runtime import FanOut
from tallygate.state.memory import MemoryStore
from tallygate.types import CallRecord, Outcome


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _hanging_hook(port: int) -> web.AppRunner:
    async def hook(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _rows(n: int, window: int) -> list[CallRecord]:
    steps = ("planning", "execution", "review", "verification")
    return [CallRecord(f"r{i}", 1_800_000_000.0 + i / 1000, Outcome.OK, 200,
                       feature=("chat", "summarize")[i % 2], user=f"u{i % 50}",
                       plan="free", run=f"run{i % 20}", step=steps[i % 4],
                       provider="openai", model_used="gpt-4o-mini",
                       input_tokens=window - 10 if i % 100 == 0 else 500,
                       output_tokens=80, cost_nusd=123_000, latency_ms=350)
            for i in range(n)]


async def _time(recorder: FanOut, rows: list[CallRecord]) -> float:
    started = time.perf_counter()
    for i, row in enumerate(rows):
        recorder.record(row)
        if i % 1000 == 999:
            await asyncio.sleep(0)  # let the alert loop and sender run, as a server would
    return (time.perf_counter() - started) / len(rows) * 1e6


async def main(n: int) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    runner = await _hanging_hook(port)
    hook = f"http://127.0.0.1:{port}/hook"
    policy = Policy.from_mapping({
        "features": {"chat": {}, "summarize": {}},
        "routing": {"steps": {"planning": "gpt-4o", "review": "gpt-4o-mini"}},
        "plans": {"free": {"tokens_per_day": 10**9}},
        "alerts": [
            {"metric": "context_utilization", "above": 0.9, "notify": hook},
            {"metric": "budget_used", "scope": "user", "above": 0.0, "notify": hook},
            {"metric": "cost_usd", "window": "minute", "above": 0, "notify": hook},
        ]})
    catalog = Catalog(policy.models)
    rows = _rows(n, catalog.get("gpt-4o-mini").context_window)
    tmp = tempfile.mkdtemp()
    ledger = await open_ledger(f"sqlite:///{tmp}/l.db")
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop()))
    alerts = AlertEngine(policy.alerts, MemoryStore(), LedgerFigures(ledger), policy=policy,
                         catalog=catalog, interval=0.05,
                         sender=WebhookSender(timeout=3600, queue_size=100))
    alerts.start()
    sets = {
        "baseline (MemoryRecorder)": FanOut(MemoryRecorder()),
        "+ metrics": FanOut(MemoryRecorder(), MetricsRecorder(policy, catalog)),
        "+ metrics + alerts (hanging webhook)": FanOut(
            MemoryRecorder(), MetricsRecorder(policy, catalog), alerts),
        "+ metrics + alerts + tracing": FanOut(
            MemoryRecorder(), MetricsRecorder(policy, catalog), alerts,
            TracingRecorder(provider)),
    }
    print(f"rows per run: {n}; {platform.python_version()} on {platform.machine()}, "
          f"{platform.processor() or 'cpu'}\n")
    print("| recorders | µs per record() |")
    print("|---|---|")
    for name, fan in sets.items():
        await _time(fan, rows[: n // 10])  # warm-up
        print(f"| {name} | {await _time(fan, rows):.2f} |")
    stats = alerts.sender.stats
    print(f"\nwebhook: queued {stats.queued}, delivered {stats.delivered}, "
          f"dropped {stats.dropped} (receiver never answers)")
    await alerts.stop()
    provider.shutdown()
    await ledger.close()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    asyncio.run(main(parser.parse_args().rows))
