"""Terminal tables and CSV for the report commands (JSON lives in reports/). Tables fit the
console by choosing columns (cli/tables.py); CSV carries every figure, exact."""

from __future__ import annotations

from dataclasses import replace

from tallygate.cli.tables import Column, fit, show, write_csv
from tallygate.reports.runs import RunsReport, WhatIf
from tallygate.reports.usage import UsageReport, UsageRow
from tallygate.units import iso, usd_display, usd_text


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _window(since: float | None, until: float | None) -> str:
    if since is None and until is None:
        return "all time"
    return f"{iso(since) or 'start'} → {iso(until) or 'now'}"


def _usage_columns(by: str) -> list[Column]:
    # a run is its owner's: `--by run` names whose run each row is
    owner = [Column("owner", lambda r: r.owner or "", number=False)] if by == "run" else []
    return [
        Column(by, lambda r: r.key if r.key is not None else "(none)", number=False),
        *owner,
        Column("calls", lambda r: _n(r.calls)),
        Column("tokens", lambda r: _n(r.total_tokens)),
        Column("cost", lambda r: usd_display(r.cost_nusd)),
        Column("rejected", lambda r: _n(r.rejected), 1),
        Column("p95 ms", lambda r: _n(r.p95_latency_ms), 2),
        Column("input", lambda r: _n(r.input_tokens), 3),
        Column("output", lambda r: _n(r.output_tokens), 3),
        Column("trimmed", lambda r: _n(r.trimmed), 4),
        Column("errors", lambda r: _n(r.errors), 4),
        Column("cache hits", lambda r: _n(r.cache_hits), 5),
        Column("saved", lambda r: _n(r.tokens_saved), 5),
        Column("cached", lambda r: _n(r.cached_tokens), 6),
        Column("reasoning", lambda r: _n(r.reasoning_tokens), 6),
        Column("p50 ms", lambda r: _n(r.p50_latency_ms), 6),
    ]


def usage(report: UsageReport, wide: bool = False) -> None:
    footer = replace(report.total, key="total") if report.rows else None
    table = fit(f"Usage by {report.by} ({_window(report.since, report.until)})",
                _usage_columns(report.by), report.rows, footer=footer, wide=wide)
    notes = []
    if not report.rows:
        notes.append("no calls recorded in this window")
    elif report.total.estimated:
        n = report.total.estimated
        notes.append(f"{n:,} call{'s have' if n != 1 else ' has'} estimated token counts")
    show(table, *notes, wide=wide)


USAGE_CSV = ("key", "calls", "input_tokens", "output_tokens", "cached_tokens",
             "cache_write_tokens", "reasoning_tokens", "total_tokens", "cost_nusd", "cost_usd",
             "rejected", "trimmed", "trimmed_tokens", "cache_hits", "tokens_saved", "errors",
             "estimated", "p50_latency_ms", "p95_latency_ms")


def usage_csv(report: UsageReport) -> None:
    names = ("key", "owner", *USAGE_CSV[1:]) if report.by == "run" else USAGE_CSV

    def row(r: UsageRow) -> list[object]:
        return [usd_text(r.cost_nusd) if name == "cost_usd" else getattr(r, name)
                for name in names]

    write_csv(names, (row(r) for r in report.rows))


def _of(owner: str) -> str:
    """` of user.alice` for a run's owner; nothing for `-` (no user, no key)."""
    return "" if owner == "-" else f" of {owner}"


def runs(report: RunsReport, wide: bool = False) -> None:
    if not report.runs:
        show(f"no runs recorded ({_window(report.since, report.until)})")
        return
    steps = [
        Column("step", lambda s: s.step or "(none)", number=False),
        Column("attempts", lambda s: _n(s.attempts)),
        Column("calls", lambda s: _n(s.calls), 1),
        Column("tokens", lambda s: _n(s.total_tokens)),
        Column("cost", lambda s: usd_display(s.cost_nusd)),
        Column("input", lambda s: _n(s.input_tokens), 3),
        Column("output", lambda s: _n(s.output_tokens), 3),
        Column("per loop", lambda s: "  ".join(
            f"#{lp.attempt if lp.attempt is not None else '-'}: {lp.total_tokens:,} tok "
            f"{usd_display(lp.cost_nusd)}" for lp in s.loops), 2, number=False),
    ]
    tables = [fit(f"run {run.run}{_of(run.owner)}: {run.total_tokens:,} tokens, "
                  f"{usd_display(run.cost_nusd)}, {run.extra_loops} extra loops", steps,
                  run.steps, wide=wide)
              for run in report.runs]
    ranked = fit("Costliest steps", [
        Column("step", lambda s: s.step or "(none)", number=False),
        Column("runs", lambda s: _n(s.runs), 2), Column("calls", lambda s: _n(s.calls), 1),
        Column("attempts", lambda s: _n(s.attempts)),
        Column("max attempts", lambda s: _n(s.max_attempts), 1),
        Column("tokens", lambda s: _n(s.total_tokens)),
        Column("cost", lambda s: usd_display(s.cost_nusd)),
    ], report.costliest_steps, wide=wide)
    parts = [*tables, ranked]
    if report.most_loops:
        parts.append(fit("Runs that looped most", [
            Column("run", lambda r: r.run, number=False),
            Column("owner", lambda r: r.owner, number=False),
            Column("extra loops", lambda r: _n(r.extra_loops)),
            Column("cost", lambda r: usd_display(r.cost_nusd)),
        ], report.most_loops[:10], wide=wide))
    show(*parts, wide=wide)


RUNS_CSV = ("run", "owner", "step", "attempts", "calls", "input_tokens", "output_tokens",
            "total_tokens", "cost_nusd", "cost_usd")


def runs_csv(report: RunsReport) -> None:
    """One line per (run, owner, step)."""
    write_csv(RUNS_CSV, ([run.run, run.owner, s.step, s.attempts, s.calls, s.input_tokens,
                          s.output_tokens, s.total_tokens, s.cost_nusd, usd_text(s.cost_nusd)]
                         for run in report.runs for s in run.steps))


def verdict(result: WhatIf) -> str:
    """`saving $0.12 (30%)` or `extra cost $0.05 (12% more)`, never a negative saving."""
    amount = usd_display(abs(result.saving_nusd))
    share = ""
    if result.current_nusd:
        share = f"{abs(result.saving_nusd) * 100 / result.current_nusd:.1f}%"
    if result.saving_nusd >= 0:
        return f"saving {amount}" + (f" ({share})" if share else "")
    return f"extra cost {amount}" + (f" ({share} more)" if share else "")


def what_if(result: WhatIf, wide: bool = False) -> None:
    table = fit(f"What if {result.subject} used {result.model} "
                f"({_window(result.since, result.until)})", [
        Column("model used", lambda g: g.model or "(unknown)", number=False),
        Column("calls", lambda g: _n(g.calls)),
        Column("input", lambda g: _n(g.input_tokens), 2),
        Column("output", lambda g: _n(g.output_tokens), 2),
        Column("cached", lambda g: _n(g.cached_tokens), 3),
        Column("current", lambda g: usd_display(g.current_nusd)),
        Column("what-if", lambda g: usd_display(g.what_if_nusd)),
    ], result.groups, wide=wide)
    if not result.groups:
        show(table, f"no priced calls recorded for {result.subject}", wide=wide)
        return
    show(table, f"current {usd_display(result.current_nusd)}, what-if "
                f"{usd_display(result.what_if_nusd)}: {verdict(result)}",
         *(f"note: {n}" for n in result.notes), wide=wide)


WHAT_IF_CSV = ("model", "calls", "input_tokens", "output_tokens", "cached_tokens",
               "cache_write_tokens", "current_nusd", "what_if_nusd", "current_usd",
               "what_if_usd")


def what_if_csv(result: WhatIf) -> None:
    write_csv(WHAT_IF_CSV, ([g.model, g.calls, g.input_tokens, g.output_tokens,
                             g.cached_tokens, g.cache_write_tokens, g.current_nusd,
                             g.what_if_nusd, usd_text(g.current_nusd),
                             usd_text(g.what_if_nusd)] for g in result.groups))
