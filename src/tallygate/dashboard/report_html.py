"""The self-contained HTML report (`tallygate report --html FILE`, and the demo's report):
inline CSS and inline SVG charts, no script, no external asset, so it opens offline and can
be mailed as one file. Every name from the ledger is escaped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from markupsafe import escape

from tallygate.dashboard.charts import hbars, stacked_bars
from tallygate.ledger.base import LedgerStore
from tallygate.reports.overview import timeline
from tallygate.reports.runs import RunRow, RunsReport, WhatIf, runs_report
from tallygate.reports.usage import UsageReport, usage_report
from tallygate.units import iso, usd_display

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
.sub{color:#666;margin-top:0}.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:8px;padding:.8rem 1.1rem;min-width:150px}
.card b{display:block;font-size:1.5rem}.card span{color:#666;font-size:.85rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{padding:.3rem .7rem;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f6f6f6}td.text{text-align:left}
tr.warn td{background:#fff1f0}.legend .swatch{display:inline-block;margin-right:1rem;
font-size:.85rem}.legend svg{margin-right:.3rem;vertical-align:-1px}
svg text{font-family:inherit}.note{color:#666;font-size:.85rem}
"""


def number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


@dataclass(frozen=True, slots=True)
class Timeline:
    labels: list[str]
    by_step: dict[str, list[int]]
    by_feature: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class ReportPage:
    """What one report shows; the demo adds its ticket columns and its what-if."""

    title: str
    subtitle: str
    by_step: UsageReport
    by_feature: UsageReport
    by_user: UsageReport
    runs: RunsReport
    timeline: Timeline
    what_if: WhatIf | None = None
    extra_cards: list[tuple[str, str]] = field(default_factory=list)
    run_headers: Sequence[str] = ()
    run_cells: Callable[[RunRow], Sequence[str]] | None = None


def _cards(page: ReportPage) -> str:
    total = page.by_feature.total
    cards = [(number(total.calls), "calls recorded"), (number(total.total_tokens), "tokens"),
             (usd_display(total.cost_nusd, 4), "cost"),
             (number(total.rejected), "rejected (budget)"),
             (number(total.tokens_saved), "tokens saved by the cache"), *page.extra_cards]
    body = "".join(f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>'
                   for v, k in cards)
    return f'<div class="cards">{body}</div>'


def usage_table(report: UsageReport, label: str, warn_rejected: bool = False) -> str:
    head = ("calls", "input", "output", "total", "cost", "rejected", "trimmed", "p50 ms",
            "p95 ms")
    rows = []
    for r in report.rows:
        cls = ' class="warn"' if warn_rejected and r.rejected else ""
        cells = (number(r.calls), number(r.input_tokens), number(r.output_tokens),
                 number(r.total_tokens), usd_display(r.cost_nusd), number(r.rejected),
                 number(r.trimmed), number(r.p50_latency_ms), number(r.p95_latency_ms))
        tds = "".join(f"<td>{escape(c)}</td>" for c in cells)
        rows.append(f"<tr{cls}><td>{escape(r.key or '(none)')}</td>{tds}</tr>")
    ths = "".join(f"<th>{escape(h)}</th>" for h in (label, *head))
    return f"<table><tr>{ths}</tr>{''.join(rows)}</table>"


def _runs_section(page: ReportPage) -> str:
    looped = page.runs.most_loops[:8]
    bars = hbars([(f"{r.run} ({r.owner})", r.extra_loops, f"{r.extra_loops} extra loops, "
                   f"{usd_display(r.cost_nusd)}") for r in looped],
                 "Runs with the most review loops")
    heads = "".join(f"<th class='text'>{escape(h)}</th>" for h in page.run_headers)
    rows = []
    for r in sorted(page.runs.runs, key=lambda r: -r.cost_nusd)[:50]:
        extra = page.run_cells(r) if page.run_cells else ()
        most = max((s.attempts for s in r.steps), default=0)
        cells = "".join(f"<td class='text'>{escape(c)}</td>" for c in extra)
        rows.append(f"<tr><td>{escape(r.run)}</td><td class='text'>{escape(r.owner)}</td>"
                    f"{cells}<td>{number(most)}</td>"
                    f"<td>{number(r.extra_loops)}</td><td>{number(r.total_tokens)}</td>"
                    f"<td>{escape(usd_display(r.cost_nusd))}</td></tr>")
    table = (f"<table><tr><th>run</th><th class='text'>owner</th>{heads}"
             "<th>most attempts of a step</th>"
             f"<th>extra loops</th><th>tokens</th><th>cost</th></tr>{''.join(rows)}</table>")
    return str(bars) + table


def what_if_section(w: WhatIf) -> str:
    share = f" ({abs(w.saving_nusd) * 100 / w.current_nusd:.0f}%)" if w.current_nusd else ""
    verdict = "saves" if w.saving_nusd >= 0 else "would cost"
    more = "" if w.saving_nusd >= 0 else " more"
    bars = hbars([
        (", ".join(g.model or "?" for g in w.groups) or "current", w.current_nusd,
         usd_display(w.current_nusd)),
        (w.model, w.what_if_nusd, usd_display(w.what_if_nusd)),
    ], f"What if {w.subject} used {w.model}")
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in w.notes)
    return (f"<p>Re-pricing the recorded calls of <b>{escape(w.subject)}</b> with the prices "
            f"of <b>{escape(w.model)}</b> {verdict} <b>{escape(usd_display(abs(w.saving_nusd)))}"
            f"</b>{more}{share}.</p>{bars}{notes}")


def render_report(page: ReportPage) -> str:
    steps = [(r.key or "(no step)", r.cost_nusd, usd_display(r.cost_nusd))
             for r in page.by_step.rows]
    rejected_users = [r.key or "?" for r in page.by_user.rows if r.rejected]
    who = ", ".join(str(escape(u)) for u in rejected_users[:20]) or "nobody"
    t = page.timeline
    body = [
        f"<h1>{escape(page.title)}</h1>", f'<p class="sub">{escape(page.subtitle)}</p>',
        _cards(page),
        "<h2>Tokens by step over time</h2>",
        str(stacked_bars(t.by_step, t.labels, "Tokens by step over time")),
        "<h2>Tokens by feature over time</h2>",
        str(stacked_bars(t.by_feature, t.labels, "Tokens by feature over time")),
        "<h2>Cost by workflow step</h2>", str(hbars(steps, "Cost by step")),
        usage_table(page.by_step, "step"),
        "<h2>Runs (tickets) that looped most</h2>", _runs_section(page),
    ]
    if page.what_if is not None:
        w = page.what_if
        body += [f"<h2>What if {escape(w.step or w.feature)} ran on {escape(w.model)}</h2>",
                 what_if_section(w)]
    body += [
        "<h2>Per feature</h2>", usage_table(page.by_feature, "feature"),
        "<h2>Per user</h2>",
        f"<p>Rejected for lack of budget (429 <code>budget_exceeded</code>): {who}.</p>",
        usage_table(page.by_user, "user", warn_rejected=True),
    ]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(page.title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


async def ledger_report(store: LedgerStore, *, since: float | None, until: float | None,
                        what_if: WhatIf | None = None) -> ReportPage:
    """The report of any ledger and window (`tallygate report --html`)."""
    by_feature = await usage_report(store, "feature", since=since, until=until)
    window = (f"{iso(since) or 'the first call'} to {iso(until) or 'now'}"
              if since is not None or until is not None else "all time")
    labels, by_step, by_feat = await timeline(store, since=since, until=until)
    return ReportPage(
        title="tallygate report",
        subtitle=f"{by_feature.total.calls:,} calls recorded, {window} (UTC). "
                 f"Ledger: {store.dialect}.",
        by_step=await usage_report(store, "step", since=since, until=until),
        by_feature=by_feature,
        by_user=await usage_report(store, "user", since=since, until=until),
        runs=await runs_report(store, since=since, until=until),
        timeline=Timeline(labels, by_step, by_feat), what_if=what_if)


def write_report(page: ReportPage, path: Path) -> Path:
    path.write_text(render_report(page), encoding="utf-8")
    return path
