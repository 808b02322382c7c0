"""The demo's self-contained HTML report: inline CSS and inline SVG charts, no scripts,
no external assets (it opens offline and can be mailed as one file)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from tallygate.demo.results import DemoResult, Timeline
from tallygate.demo.workload import ticket_title
from tallygate.reports.usage import UsageReport, usd_display

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
.sub{color:#666;margin-top:0}.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:8px;padding:.8rem 1.1rem;min-width:150px}
.card b{display:block;font-size:1.5rem}.card span{color:#666;font-size:.85rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{padding:.3rem .7rem;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f6f6f6}
tr.warn td{background:#fff1f0}.legend span{display:inline-block;margin-right:1rem;font-size:.85rem}
.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:-1px}
svg text{font-family:inherit}.note{color:#666;font-size:.85rem}
"""


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _legend(names: list[str]) -> str:
    items = "".join(
        f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{escape(n)}</span>'
        for i, n in enumerate(names)
    )
    return f'<div class="legend">{items}</div>'


def stacked_bars_svg(series: dict[str, list[int]], bucket_seconds: float,
                     title: str, width: int = 1000, height: int = 260) -> str:
    """One bar per time bucket, stacked by series (tokens)."""
    names = sorted(series, key=lambda k: -sum(series[k]))
    buckets = len(next(iter(series.values()), []))
    if not buckets:
        return '<p class="note">no calls recorded</p>'
    totals = [sum(series[n][i] for n in names) for i in range(buckets)]
    top = max(*totals, 1)
    left, plot_h = 70, height - 50
    bar_w = (width - left - 10) / buckets
    parts = [f'<svg role="img" viewBox="0 0 {width} '
             f'{height}" width="100%"><title>{escape(title)}</title>']
    for frac in (0, 0.5, 1):
        y = 10 + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{left - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{int(top * frac):,}</text>')
    for i in range(buckets):
        y = 10 + plot_h
        for j, name in enumerate(names):
            h = plot_h * series[name][i] / top
            if h <= 0:
                continue
            y -= h
            parts.append(f'<rect x="{left + i * bar_w + 1:.1f}" y="{y:.1f}" '
                         f'width="{bar_w - 2:.1f}" height="{h:.1f}" '
                         f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(name)}: '
                         f'{series[name][i]:,} tokens</title></rect>')
        if i % max(1, buckets // 5) == 0:
            parts.append(f'<text x="{left + i * bar_w:.1f}" y="{height - 8}" font-size="11">'
                         f'+{i * bucket_seconds:.1f}s</text>')
    parts.append("</svg>")
    return _legend(names) + "".join(parts)


def hbars_svg(items: list[tuple[str, int, str]], title: str, width: int = 1000) -> str:
    """Horizontal bars: (label, value, value text)."""
    if not items:
        return '<p class="note">nothing to show</p>'
    top = max(*(v for _, v, _ in items), 1)
    left, row_h = 160, 26
    height = row_h * len(items) + 10
    parts = [f'<svg role="img" viewBox="0 0 {width} '
             f'{height}" width="100%"><title>{escape(title)}</title>']
    for i, (label, value, text) in enumerate(items):
        y = 5 + i * row_h
        w = (width - left - 260) * value / top  # room for the longest value label
        parts.append(
            f'<text x="{left - 8}" y="{y + 16}" font-size="12" text-anchor="end">'
            f'{escape(label)}</text><rect x="{left}" y="{y + 3}" width="{w:.1f}" height="18" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/><text x="{left + w + 6:.1f}" y="{y + 16}" '
            f'font-size="12">{escape(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _cards(result: DemoResult) -> str:
    total = result.by_feature.total
    w = result.what_if
    cards = [
        (_n(total.calls), "calls recorded"),
        (_n(total.total_tokens), "tokens"),
        (usd_display(total.cost_nusd, 4), "cost"),
        (_n(total.rejected), "rejected (budget)"),
        (usd_display(w.saving_nusd, 4), f"saved if {w.step} ran on {w.model}"),
    ]
    body = "".join(f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>'
                   for v, k in cards)
    return f'<div class="cards">{body}</div>'


def usage_table(report: UsageReport, label: str, warn_rejected: bool = False) -> str:
    head = ("calls", "input", "output", "total", "cost", "rejected", "trimmed", "p50 ms",
            "p95 ms")
    rows = []
    for r in report.rows:
        cls = ' class="warn"' if warn_rejected and r.rejected else ""
        cells = (_n(r.calls), _n(r.input_tokens), _n(r.output_tokens), _n(r.total_tokens),
                 usd_display(r.cost_nusd), _n(r.rejected), _n(r.trimmed),
                 _n(r.p50_latency_ms), _n(r.p95_latency_ms))
        tds = "".join(f"<td>{escape(c)}</td>" for c in cells)
        rows.append(f"<tr{cls}><td>{escape(r.key or '(none)')}</td>{tds}</tr>")
    ths = "".join(f"<th>{h}</th>" for h in (label, *head))
    return f"<table><tr>{ths}</tr>{''.join(rows)}</table>"


def _runs_section(result: DemoResult) -> str:
    looped = result.runs.most_loops[:8]
    bars = hbars_svg(
        [(r.run, r.extra_loops, f"{r.extra_loops} extra loops, {usd_display(r.cost_nusd)}")
         for r in looped], "Runs with the most review loops")
    rows = []
    for r in result.runs.runs:
        spec = next((s.spec for s in result.workload.sessions if s.name == r.run), None)
        review = next((s for s in r.steps if s.step == "review"), None)
        rows.append(
            f"<tr><td>{escape(r.run)}</td><td style='text-align:left'>"
            f"{escape(ticket_title(r.run))}</td><td>{escape(spec or '-')}</td>"
            f"<td>{_n(review.attempts if review else 0)}</td><td>{_n(r.total_tokens)}</td>"
            f"<td>{usd_display(r.cost_nusd)}</td></tr>"
        )
    table = ("<table><tr><th>run</th><th style='text-align:left'>ticket</th><th>spec</th>"
             f"<th>review rounds</th><th>tokens</th><th>cost</th></tr>{''.join(rows)}</table>")
    return bars + table


def _what_if_section(result: DemoResult) -> str:
    w = result.what_if
    pct = f" ({w.saving_nusd * 100 / w.current_nusd:.0f}%)" if w.current_nusd else ""
    bars = hbars_svg([
        (", ".join(g.model or "?" for g in w.groups) or "current", w.current_nusd,
         usd_display(w.current_nusd)),
        (w.model, w.what_if_nusd, usd_display(w.what_if_nusd)),
    ], f"What if {w.step} used {w.model}")
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in w.notes)
    return (f"<p>Re-pricing the recorded <b>{escape(w.step)}</b> calls with the prices of "
            f"<b>{escape(w.model)}</b> saves <b>{usd_display(w.saving_nusd)}</b>{pct}.</p>"
            f"{bars}{notes}")


def _timeline_section(t: Timeline) -> str:
    return ("<h2>Tokens by step over time</h2>"
            + stacked_bars_svg(t.by_step, t.bucket_seconds, "Tokens by step over time")
            + "<h2>Tokens by feature over time</h2>"
            + stacked_bars_svg(t.by_feature, t.bucket_seconds, "Tokens by feature over time"))


def render_html(result: DemoResult) -> str:
    steps = [(r.key or "(no step)", r.cost_nusd, usd_display(r.cost_nusd))
             for r in result.by_step.rows]
    rejected_users = [r.key for r in result.by_user.rows if r.rejected]
    who = ", ".join(escape(u or "?") for u in rejected_users) or "nobody"
    body = [
        "<h1>tallygate demo report</h1>",
        f'<p class="sub">{result.workload.total_calls} scripted calls in '
        f"{result.seconds:.1f} s through the gateway to a simulated provider "
        f"(seed {result.workload.seed}). Storage: {escape(str(result.directory))}</p>",
        _cards(result),
        _timeline_section(result.timeline),
        "<h2>Cost by workflow step</h2>",
        hbars_svg(steps, "Cost by step"),
        usage_table(result.by_step, "step"),
        "<h2>Runs (tickets) that looped most</h2>",
        _runs_section(result),
        f"<h2>What if {escape(result.what_if.step)} ran on a cheaper model</h2>",
        _what_if_section(result),
        "<h2>Per feature</h2>", usage_table(result.by_feature, "feature"),
        "<h2>Per user</h2>",
        f"<p>Rejected for lack of budget (429 <code>budget_exceeded</code>): {who}.</p>",
        usage_table(result.by_user, "user", warn_rejected=True),
    ]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>tallygate demo report</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def write_html(result: DemoResult, path: Path) -> Path:
    path.write_text(render_html(result), encoding="utf-8")
    return path
