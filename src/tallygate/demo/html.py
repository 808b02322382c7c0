"""The demo's HTML report: the same self-contained report as `tallygate report --html`
(dashboard/report_html.py), with the demo's ticket columns, timeline and what-if."""

from __future__ import annotations

from pathlib import Path

from tallygate.dashboard.report_html import ReportPage, Timeline, render_report
from tallygate.demo.results import DemoResult
from tallygate.demo.workload import ticket_title
from tallygate.reports.runs import RunRow
from tallygate.units import usd_display


def report_page(result: DemoResult) -> ReportPage:
    t = result.timeline
    labels = [f"+{i * t.bucket_seconds:.1f}s" for i in range(t.buckets)]
    specs = {s.name: s.spec for s in result.workload.sessions}
    w = result.what_if

    def ticket(run: RunRow) -> list[str]:
        return [ticket_title(run.run), specs.get(run.run) or "-"]

    return ReportPage(
        title="tallygate demo report",
        subtitle=f"{result.workload.total_calls} scripted calls in {result.seconds:.1f} s "
                 "through the gateway to a simulated provider "
                 f"(seed {result.workload.seed}). Storage: {result.directory}",
        by_step=result.by_step, by_feature=result.by_feature, by_user=result.by_user,
        runs=result.runs, timeline=Timeline(labels, t.by_step, t.by_feature), what_if=w,
        extra_cards=[(usd_display(w.saving_nusd, 4), f"saved if {w.step} ran on {w.model}")],
        run_headers=("ticket", "spec"), run_cells=ticket,
    )


def render_html(result: DemoResult) -> str:
    return render_report(report_page(result))


def write_html(result: DemoResult, path: Path) -> Path:
    path.write_text(render_html(result), encoding="utf-8")
    return path
