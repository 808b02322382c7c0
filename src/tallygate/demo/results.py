"""The demo's findings, read back from the ledger with the same report functions as
`tallygate report`: per step, feature and user, the runs (loops), the what-if, and the
tokens over time that the HTML report charts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tallygate.core.catalog import Catalog
from tallygate.demo.runner import TIERS, WHAT_IF_STEP, ClientTally
from tallygate.demo.workload import Workload
from tallygate.ledger.base import LedgerStore
from tallygate.reports.runs import RunsReport, WhatIf, runs_json, runs_report, what_if, what_if_json
from tallygate.reports.usage import UsageReport, usage_json, usage_report

TIMELINE_BUCKETS = 20


@dataclass(frozen=True, slots=True)
class Timeline:
    """Tokens (input + output, rejected calls excluded) per time bucket and series."""

    start: float
    bucket_seconds: float
    by_step: dict[str, list[int]] = field(default_factory=dict)
    by_feature: dict[str, list[int]] = field(default_factory=dict)

    @property
    def buckets(self) -> int:
        return len(next(iter(self.by_feature.values()), []))


@dataclass(frozen=True, slots=True)
class DemoResult:
    directory: Path
    seconds: float  # wall-clock time the workload took
    workload: Workload
    tally: ClientTally
    by_step: UsageReport
    by_feature: UsageReport
    by_user: UsageReport
    runs: RunsReport
    what_if: WhatIf
    timeline: Timeline
    html: Path | None = None


def bucket_rows(rows: list[tuple[Any, ...]], buckets: int = TIMELINE_BUCKETS) -> Timeline:
    """(ts, step, feature, tokens) rows → per-bucket sums per step and per feature.
    Calls without a step are grouped as "(no step)"."""
    if not rows:
        return Timeline(0.0, 1.0)
    start = min(float(r[0]) for r in rows)
    span = max(float(r[0]) for r in rows) - start
    width = max(span / buckets, 1e-6) if span > 0 else 1.0
    by_step: dict[str, list[int]] = {}
    by_feature: dict[str, list[int]] = {}
    for ts, step, feature, tokens in rows:
        i = min(buckets - 1, int((float(ts) - start) / width))
        by_step.setdefault(step or "(no step)", [0] * buckets)[i] += int(tokens or 0)
        by_feature.setdefault(feature or "(none)", [0] * buckets)[i] += int(tokens or 0)
    return Timeline(start, width, by_step, by_feature)


_TIMELINE_SQL = """SELECT ts, step, feature, input_tokens + output_tokens FROM calls
WHERE outcome <> 'rejected' ORDER BY ts"""


async def collect(store: LedgerStore, directory: Path, seconds: float, workload: Workload,
                  tally: ClientTally, models: Mapping[str, Any] | None = None) -> DemoResult:
    catalog = Catalog(models)
    target = catalog.get(TIERS["small"])
    return DemoResult(
        directory=directory, seconds=seconds, workload=workload, tally=tally,
        by_step=await usage_report(store, "step"),
        by_feature=await usage_report(store, "feature"),
        by_user=await usage_report(store, "user"),
        runs=await runs_report(store),
        what_if=await what_if(store, WHAT_IF_STEP, target, lookup=catalog.find),
        timeline=bucket_rows(await store.query(_TIMELINE_SQL)),
    )


def demo_json(result: DemoResult) -> dict[str, Any]:
    """Everything the demo printed, in the report commands' JSON shapes."""
    tally = result.tally
    users = sorted({u for u, _ in tally.outcomes})
    return {
        "directory": str(result.directory),
        "seconds": round(result.seconds, 3),
        "calls": result.workload.total_calls,
        "client": {
            "ok": tally.count("ok"), "rejected": tally.count("rejected"),
            "errors": tally.count("error"),
            "by_user": {u: {o: tally.count(o, u) for o in ("ok", "rejected", "error")}
                        for u in users},
        },
        "by_step": usage_json(result.by_step),
        "by_feature": usage_json(result.by_feature),
        "by_user": usage_json(result.by_user),
        "runs": runs_json(result.runs),
        "what_if": what_if_json(result.what_if),
        "html": None if result.html is None else str(result.html),
    }
