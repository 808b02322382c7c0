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


def _cost(p: dict[str, Any], f: dict[str, Any]) -> str:
    return (f"spend ${escape(f['cost_usd'])} {_window(p)} is past "
            f"${escape(f['threshold_usd'])} ({_n(f['calls'])} calls, {_n(f['tokens'])} tokens)")


def _rejections(p: dict[str, Any], f: dict[str, Any]) -> str:
    return (f"{_pct(f['rejection_rate'])} of calls rejected {_window(p)}, past "
            f"{_pct(f['threshold'])} ({_n(f['rejected'])} of {_n(f['calls'])})")


def _context(p: dict[str, Any], f: dict[str, Any]) -> str:
    return (f"a call used {_pct(f['utilization'])} of {escape(f['model'])}'s context "
            f"({_n(f['input_tokens'])} of {_n(f['context_window'])} tokens), past "
            f"{_pct(f['threshold'])}; request {escape(f['request_id'])}")


def _budget(p: dict[str, Any], f: dict[str, Any]) -> str:
    return (f"{escape(f['scope'])} {escape(f['id'])} has used {_pct(f['used_fraction'])} "
            f"of its {escape(f['metric'])} limit ({_n(f['used'])} of {_n(f['limit'])}) "
            f"{_window(p)}, past {_pct(f['threshold'])}")


def _runaway(p: dict[str, Any], f: dict[str, Any]) -> str:
    who = (f"run {escape(f['run'])}" if f.get("run") is not None
           else f"conversation {escape(f.get('conversation'))}")
    verdict = "refused" if f.get("refused") else "served"
    return (f"{who} (user {escape(f.get('user'))}): a call of {_n(f['input_tokens'])} "
            f"input tokens broke the {escape(f['rule'])} rule (limit {escape(f['limit'])}); "
            f"{verdict}")


def _limit(f: dict[str, Any]) -> str:
    holder = escape(f["scope"]) if f.get("id") is None else (
        f"{escape(f['scope'])} {escape(f['id'])}'s")
    return f"{holder} {escape(f['metric'])} per {escape(f['window'])} limit"


def _used_up(p: dict[str, Any], f: dict[str, Any]) -> str:
    return (f"{_limit(f)} is used up {_window(p)}: calls are refused (first: "
            f"{escape(f.get('request_id'))})")


def _reset(p: dict[str, Any], f: dict[str, Any]) -> str:
    return f"{_limit(f)} has room again (a new {escape(f['window'])} began)"


_HEADLINES = {"cost_usd": _cost, "rejection_rate": _rejections, "context_utilization": _context,
              "budget_used": _budget, "runaway_context": _runaway,
              "budget_exhausted": _used_up, "budget_reset": _reset}


def _headline(payload: dict[str, Any]) -> str:
    metric = payload["rule"]["metric"]
    line = _HEADLINES.get(metric)
    return line(payload, payload["figures"]) if line else f"{escape(metric)} fired"


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
