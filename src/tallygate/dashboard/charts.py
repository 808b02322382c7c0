"""Inline SVG charts for the dashboard and the self-contained HTML report: stacked bars
over time buckets and horizontal bars. No script, no style attribute (the dashboard's
Content-Security-Policy allows neither inline), colours as SVG presentation attributes.
Every name is escaped here: the result is markup safe to place in a page."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup, escape

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
OTHER_COLOUR = "#bab0ac"


def colour(i: int, name: str) -> str:
    return OTHER_COLOUR if name == "(other)" else PALETTE[i % len(PALETTE)]


def thousands(value: int) -> str:
    return f"{value:,}"


def legend(names: Sequence[str]) -> Markup:
    items = "".join(
        f'<span class="swatch"><svg width="12" height="12" aria-hidden="true"><rect '
        f'width="12" height="12" fill="{colour(i, n)}"/></svg>{escape(n)}</span>'
        for i, n in enumerate(names))
    return Markup(f'<div class="legend">{items}</div>')


def _ticks(count: int, most: int = 6) -> list[int]:
    step = max(1, -(-count // most))
    return list(range(0, count, step))


def stacked_bars(series: Mapping[str, Sequence[int]], labels: Sequence[str], title: str, *,
                 fmt: Callable[[int], str] = thousands, unit: str = "tokens",
                 width: int = 1000, height: int = 260) -> Markup:
    """One bar per bucket (labels[i]), stacked by series in the order given."""
    names = list(series)
    buckets = len(labels)
    if not names or not buckets or not any(any(v) for v in series.values()):
        return Markup('<p class="note">no calls in this window</p>')
    totals = [sum(series[n][i] for n in names) for i in range(buckets)]
    top = max(*totals, 1)
    left, plot_h = 90, height - 40
    bar_w = (width - left - 10) / buckets
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%">'
             f"<title>{escape(title)}</title>"]
    for frac in (0, 0.5, 1):
        y = 10 + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{left - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{escape(fmt(int(top * frac)))}</text>')
    for i in range(buckets):
        y = 10.0 + plot_h
        for j, name in enumerate(names):
            value = series[name][i]
            h = plot_h * value / top
            if h <= 0:
                continue
            y -= h
            parts.append(
                f'<rect x="{left + i * bar_w + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}"'
                f' height="{h:.1f}" fill="{colour(j, name)}"><title>{escape(name)} '
                f"({escape(labels[i])}): {escape(fmt(value))} {escape(unit)}</title></rect>")
    for i in _ticks(buckets):
        parts.append(f'<text x="{left + i * bar_w:.1f}" y="{height - 12}" font-size="11">'
                     f"{escape(labels[i])}</text>")
    parts.append("</svg>")
    return legend(names) + Markup("".join(parts))


def hbars(items: Sequence[tuple[str, int, str]], title: str, *, width: int = 1000) -> Markup:
    """Horizontal bars: (label, value, value text)."""
    if not items:
        return Markup('<p class="note">nothing to show</p>')
    top = max(*(v for _, v, _ in items), 1)
    left, row_h = 170, 26
    height = row_h * len(items) + 10
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%">'
             f"<title>{escape(title)}</title>"]
    for i, (label, value, text) in enumerate(items):
        y = 5 + i * row_h
        w = (width - left - 260) * max(value, 0) / top  # room for the longest value text
        short = label if len(label) <= 24 else label[:23] + "…"
        parts.append(
            f'<text x="{left - 8}" y="{y + 16}" font-size="12" text-anchor="end">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
            f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="18" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/><text x="{left + w + 6:.1f}" y="{y + 16}" '
            f'font-size="12">{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
