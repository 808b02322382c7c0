"""An alert as a Slack message (`alerts[].format: slack`): what a Slack incoming webhook
takes, `{"text": …}` with the same words as one `mrkdwn` section, one line per alert and a
line of its top contributors.

Names in an alert come from callers (users, runs, features, steps, models): Slack reads
`<…>` as links and mentions (`<!channel>` notifies everyone) and `&` as an entity, so
every name is escaped as Slack asks (`&amp;`, `&lt;`, `&gt;`) and nothing a caller sent
can format, link or mention."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def escape(text: object) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else escape(value)


def _pct(value: Any) -> str:
    """0.85 → `85%`, 0.0312 → `3.12%` (two places at most, no trailing zeros)."""
    share = (Decimal(str(value)) * 100).quantize(Decimal("0.01")).normalize()
    return f"{format(share, 'f')}%"


def _window(payload: dict[str, Any]) -> str:
    window = payload["window"]
    if window.get("start") is None:
        return "over the run's life"
    return f"this {escape(window['name'])} (from {escape(window['start'])})"


def _headline(payload: dict[str, Any]) -> str:
    metric, f = payload["rule"]["metric"], payload["figures"]
    if metric == "cost_usd":
        return (f"spend ${escape(f['cost_usd'])} {_window(payload)} is past "
                f"${escape(f['threshold_usd'])} ({_n(f['calls'])} calls, "
                f"{_n(f['tokens'])} tokens)")
    if metric == "rejection_rate":
        return (f"{_pct(f['rejection_rate'])} of calls rejected {_window(payload)}, past "
                f"{_pct(f['threshold'])} ({_n(f['rejected'])} of {_n(f['calls'])})")
    if metric == "context_utilization":
        return (f"a call used {_pct(f['utilization'])} of {escape(f['model'])}'s context "
                f"({_n(f['input_tokens'])} of {_n(f['context_window'])} tokens), past "
                f"{_pct(f['threshold'])}; request {escape(f['request_id'])}")
    if metric == "budget_used":
        return (f"{escape(f['scope'])} {escape(f['id'])} has used {_pct(f['used_fraction'])} "
                f"of its {escape(f['metric'])} limit ({_n(f['used'])} of {_n(f['limit'])}) "
                f"{_window(payload)}, past {_pct(f['threshold'])}")
    if metric == "runaway_context":
        who = (f"run {escape(f['run'])}" if f.get("run") is not None
               else f"conversation {escape(f.get('conversation'))}")
        verdict = "refused" if f.get("refused") else "served"
        return (f"{who} (user {escape(f.get('user'))}): a call of {_n(f['input_tokens'])} "
                f"input tokens broke the {escape(f['rule'])} rule (limit "
                f"{escape(f['limit'])}); {verdict}")
    return f"{escape(metric)} fired"


def _contributors(payload: dict[str, Any]) -> str | None:
    parts = []
    for by, rows in (payload.get("top_contributors") or {}).items():
        names = [escape(row.get(by)) for row in rows[:3] if isinstance(row, dict)]
        if names:
            parts.append(f"{escape(by)}: {', '.join(names)}")
    return "top " + "; ".join(parts) if parts else None


def slack_message(payload: dict[str, Any]) -> dict[str, Any]:
    """The Slack body for one alert payload (docs/observability.md)."""
    lines = [f"*tallygate alert* ({escape(payload['rule']['id'])}): {_headline(payload)}"]
    top = _contributors(payload)
    if top:
        lines.append(top)
    text = "\n".join(lines)
    return {"text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
