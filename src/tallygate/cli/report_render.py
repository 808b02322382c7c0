"""Rich tables for the report commands (terminal output only; JSON lives in report.py)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tallygate.reports.runs import RunsReport, WhatIf
from tallygate.reports.usage import UsageReport, UsageRow, iso, usd_display


def _console() -> Console:
    # Piped output (files, CI logs) gets room for every column instead of 80 squeezed ones.
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    return console


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _window(since: float | None, until: float | None) -> str:
    if since is None and until is None:
        return "all time"
    return f"{iso(since) or 'start'} → {iso(until) or 'now'}"


_USAGE_COLUMNS = ("calls", "input", "output", "cached", "reasoning", "total", "cost",
                  "rejected", "trimmed", "cache hits", "saved", "errors", "p50 ms", "p95 ms")


def _usage_cells(row: UsageRow) -> list[str]:
    return [
        _n(row.calls), _n(row.input_tokens), _n(row.output_tokens), _n(row.cached_tokens),
        _n(row.reasoning_tokens), _n(row.total_tokens), usd_display(row.cost_nusd),
        _n(row.rejected), _n(row.trimmed), _n(row.cache_hits), _n(row.tokens_saved),
        _n(row.errors), _n(row.p50_latency_ms), _n(row.p95_latency_ms),
    ]


def usage(report: UsageReport) -> None:
    table = Table(title=f"Usage by {report.by} ({_window(report.since, report.until)})",
                  show_footer=bool(report.rows))
    table.add_column(report.by, footer="total", no_wrap=True)
    for name, cell in zip(_USAGE_COLUMNS, _usage_cells(report.total), strict=True):
        table.add_column(name, justify="right", footer=cell)
    for row in report.rows:
        table.add_row(row.key if row.key is not None else "(none)", *_usage_cells(row))
    console = _console()
    console.print(table)
    if not report.rows:
        console.print("no calls recorded in this window")
    elif report.total.estimated:
        console.print(f"{report.total.estimated:,} calls have estimated token counts")


def runs(report: RunsReport) -> None:
    console = _console()
    if not report.runs:
        console.print(f"no runs recorded ({_window(report.since, report.until)})")
        return
    for run in report.runs:
        table = Table(title=f"run {run.run}: {run.total_tokens:,} tokens, "
                            f"{usd_display(run.cost_nusd)}, {run.extra_loops} extra loops")
        for name in ("step", "attempts", "calls", "input", "output", "cost", "per loop"):
            table.add_column(name, justify="left" if name in ("step", "per loop") else "right")
        for step in run.steps:
            loops = "  ".join(
                f"#{lp.attempt if lp.attempt is not None else '-'}: {lp.total_tokens:,} tok "
                f"{usd_display(lp.cost_nusd)}" for lp in step.loops
            )
            table.add_row(step.step or "(none)", _n(step.attempts), _n(step.calls),
                          _n(step.input_tokens), _n(step.output_tokens),
                          usd_display(step.cost_nusd), loops)
        console.print(table)
    ranked = Table(title="Costliest steps")
    for name in ("step", "runs", "calls", "attempts", "max attempts", "tokens", "cost"):
        ranked.add_column(name, justify="left" if name == "step" else "right")
    for s in report.costliest_steps:
        ranked.add_row(s.step or "(none)", _n(s.runs), _n(s.calls), _n(s.attempts),
                       _n(s.max_attempts), _n(s.total_tokens), usd_display(s.cost_nusd))
    console.print(ranked)
    if report.most_loops:
        looped = Table(title="Runs that looped most")
        for name in ("run", "extra loops", "cost"):
            looped.add_column(name, justify="left" if name == "run" else "right")
        for r in report.most_loops[:10]:
            looped.add_row(r.run, _n(r.extra_loops), usd_display(r.cost_nusd))
        console.print(looped)


def what_if(result: WhatIf) -> None:
    console = _console()
    table = Table(title=f"What if step {result.step!r} used {result.model} "
                        f"({_window(result.since, result.until)})")
    for name in ("model used", "calls", "input", "output", "cached", "current", "what-if"):
        table.add_column(name, justify="left" if name == "model used" else "right")
    for g in result.groups:
        table.add_row(g.model or "(unknown)", _n(g.calls), _n(g.input_tokens),
                      _n(g.output_tokens), _n(g.cached_tokens), usd_display(g.current_nusd),
                      usd_display(g.what_if_nusd))
    console.print(table)
    if not result.groups:
        console.print(f"no priced calls recorded for step {result.step!r}")
        return
    pct = ""
    if result.current_nusd:
        pct = f" ({result.saving_nusd * 100 / result.current_nusd:.1f}%)"
    verb = "saving" if result.saving_nusd >= 0 else "extra cost"
    console.print(f"current {usd_display(result.current_nusd)}, what-if "
                  f"{usd_display(result.what_if_nusd)}: {verb} "
                  f"{usd_display(abs(result.saving_nusd))}{pct}")
    for note in result.notes:
        console.print(f"note: {note}")
