"""The dashboard's read models: tokens and cost over a recent window in time buckets,
stacked by one name, the window's totals (calls, refusals by reason, trims, cache savings),
the costliest and most-looped runs, spend per key, and what-if re-pricing.

Windows end now and are whole buckets: the last hour by minute, the last day by hour,
the last 30 days by day (UTC). Minute buckets read the raw rows of the window through the
`ts` index; everything else reads the rollups the ledger keeps (ledger/rollups.py):
hourly ones for a day, daily ones for 30 days, so a 30-day view of millions of calls sums
some ten thousand rows.
Names stored as '' in the rollups come back as None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tallygate.config.names import did_you_mean
from tallygate.errors import InvalidRequest
from tallygate.ledger.base import LedgerStore
from tallygate.ledger.rows import time_filter
from tallygate.reports.runs import WhatIf, WhatIfGroup, _rates, _tokenizer_notes
from tallygate.reports.usage import as_int
from tallygate.types import ModelInfo

OTHER = "(other)"
NONE = "(none)"


@dataclass(frozen=True, slots=True)
class Span:
    name: str
    bucket: int  # seconds per bucket
    buckets: int
    label: str

    def bounds(self, now: float) -> tuple[int, int]:
        """First bucket number and the bucket after the last (the current one included)."""
        last = int(now // self.bucket)
        return last - self.buckets + 1, last + 1


SPANS: dict[str, Span] = {
    "hour": Span("hour", 60, 60, "last hour, by minute"),
    "day": Span("day", 3600, 24, "last day, by hour"),
    "month": Span("month", 86400, 30, "last 30 days, by day"),
}
STACKS: tuple[str, ...] = ("feature", "user", "model", "step", "key", "plan")
_LOW = {"feature": "feature", "model": "model", "step": "step", "plan": "plan"}
_NAMES = {3600: ("rollup_hour", "hour"), 86400: ("rollup_day", "day")}  # by bucket width
_IDS = {3600: ("rollup_ids_hour", "hour"), 86400: ("rollup_ids", "day")}
_RAW = {"feature": "feature", "user": '"user"', "key": "key_id", "step": "step",
        "plan": "plan", "model": "COALESCE(model_used, model_requested)"}


def span_of(name: str) -> Span:
    if name not in SPANS:
        raise InvalidRequest(f"unknown window {name!r}{did_you_mean(name, SPANS)}: use one "
                             f"of {', '.join(SPANS)}", param="window")
    return SPANS[name]


def stack_of(name: str) -> str:
    if name not in STACKS:
        raise InvalidRequest(f"cannot stack by {name!r}{did_you_mean(name, STACKS)}: use one "
                             f"of {', '.join(STACKS)}", param="by")
    return name


def _floor(store: LedgerStore, expr: str, width: float) -> str:
    if store.dialect == "sqlite":
        return f"CAST({expr} / {width} AS INTEGER)"
    return f"floor({expr} / {width})::bigint"


def _name(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


# ---------------------------------------------------------------- tokens and cost over time


@dataclass(frozen=True, slots=True)
class TimeSeries:
    span: Span
    by: str
    first: int  # bucket number of the first bucket
    tokens: dict[str, list[int]] = field(default_factory=dict)  # series → per bucket
    cost_nusd: dict[str, list[int]] = field(default_factory=dict)

    @property
    def starts(self) -> list[float]:
        return [float((self.first + i) * self.span.bucket) for i in range(self.span.buckets)]

    def labels(self) -> list[str]:
        fmt = "%m-%d" if self.span.bucket >= 86400 else "%H:%M"
        return [datetime.fromtimestamp(t, UTC).strftime(fmt) for t in self.starts]


_OTHERS = "\x1fother"  # what the series query calls every name outside the top ones


def _source(store: LedgerStore, span: Span, by: str, first: int,
            end: int) -> tuple[str, str, str, list[Any]]:
    """(bucket expression, name expression, FROM … WHERE …, its parameters) of the cheapest
    source for the window: the raw rows, the hourly/daily names rollup, or the per-id one."""
    if span.bucket == 60:
        return (_floor(store, "ts", span.bucket), f"COALESCE({_RAW[by]}, '')",
                "calls WHERE ts >= ? AND ts < ?", [first * span.bucket, end * span.bucket])
    if by in _LOW:
        table, col = _NAMES[span.bucket]
        return col, _LOW[by], f"{table} WHERE {col} >= ? AND {col} < ?", [first, end]
    table, col = _IDS[span.bucket]
    return col, "value", f"{table} WHERE dim = ? AND {col} >= ? AND {col} < ?", [
        by, first, end]


async def _bucket_sums(store: LedgerStore, span: Span, by: str, first: int, end: int,
                       top: int) -> list[tuple[Any, ...]]:
    """(bucket, name, tokens, cost) rows of the window: the `top` names by tokens, every
    other name summed as one (ranked first in SQL, so a day of a thousand users comes
    back as a few hundred rows, not tens of thousands)."""
    bucket, name, source, params = _source(store, span, by, first, end)
    tokens = "SUM(input_tokens + output_tokens)"
    ranked = await store.query(
        f"SELECT {name}, {tokens} FROM {source} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
        [*params, top + 1])
    if len(ranked) <= top:
        return await store.query(
            f"SELECT {bucket}, {name}, {tokens}, SUM(cost_nusd) FROM {source} GROUP BY 1, 2",
            params)
    keep = [r[0] for r in ranked[:top]]
    marks = ", ".join("?" for _ in keep)
    return await store.query(
        f"SELECT {bucket}, CASE WHEN {name} IN ({marks}) THEN {name} ELSE ? END, {tokens}, "
        f"SUM(cost_nusd) FROM {source} GROUP BY 1, 2", [*keep, _OTHERS, *params])


async def timeseries(store: LedgerStore, span: Span, by: str, *, now: float,
                     top: int = 8) -> TimeSeries:
    """Tokens and cost per bucket of `span` ending now, one series per name of `by`
    (the `top` largest by tokens, the rest summed as "(other)")."""
    first, end = span.bounds(now)
    rows = await _bucket_sums(store, span, stack_of(by), first, end, top)
    tokens_by: dict[str, list[int]] = {}
    cost_by: dict[str, list[int]] = {}
    for bucket, name, tokens, cost in rows:
        key = OTHER if name == _OTHERS else (_name(name) or NONE)
        i = int(bucket) - first
        if 0 <= i < span.buckets:
            tokens_by.setdefault(key, [0] * span.buckets)[i] += as_int(tokens)
            cost_by.setdefault(key, [0] * span.buckets)[i] += as_int(cost)
    order = sorted(tokens_by, key=lambda k: (k == OTHER, -sum(tokens_by[k]), k))
    return TimeSeries(span, by, first, {k: tokens_by[k] for k in order},
                      {k: cost_by[k] for k in order})


# ---------------------------------------------------------------- a report's timeline


async def timeline(store: LedgerStore, *, since: float | None, until: float | None,
                   buckets: int = 30) -> tuple[list[str], dict[str, list[int]],
                                               dict[str, list[int]]]:
    """Tokens (refused calls excluded) in `buckets` equal slices of a window, by step and
    by feature: (bucket labels, by step, by feature). Summed in SQL."""
    where, params = time_filter(since, until)
    found = await store.query(f"SELECT MIN(ts), MAX(ts) FROM calls WHERE {where}", params)
    if not found or found[0][0] is None:
        return [], {}, {}
    lo = float(since if since is not None else found[0][0])
    hi = float(until if until is not None else found[0][1])
    width = max((hi - lo) / buckets, 1e-3)
    b = _floor(store, "(ts - ?)", width)
    sql = (f"SELECT {b}, step, feature, SUM(input_tokens + output_tokens) FROM calls "
           f"WHERE outcome <> 'rejected' AND {where} GROUP BY 1, 2, 3")
    by_step: dict[str, list[int]] = {}
    by_feature: dict[str, list[int]] = {}
    for bucket, step, feature, tokens in await store.query(sql, [lo, *params]):
        i = min(buckets - 1, max(0, int(bucket)))
        by_step.setdefault(step or "(no step)", [0] * buckets)[i] += as_int(tokens)
        by_feature.setdefault(feature or NONE, [0] * buckets)[i] += as_int(tokens)
    fmt = "%Y-%m-%d" if hi - lo > 3 * 86400 else "%m-%d %H:%M"
    labels = [datetime.fromtimestamp(lo + i * width, UTC).strftime(fmt) for i in range(buckets)]
    return labels, _largest_first(by_step), _largest_first(by_feature)


def _largest_first(series: dict[str, list[int]]) -> dict[str, list[int]]:
    return dict(sorted(series.items(), key=lambda kv: (-sum(kv[1]), kv[0])))


# ---------------------------------------------------------------- the window's totals


@dataclass(frozen=True, slots=True)
class Totals:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_nusd: int = 0
    rejected: int = 0
    trimmed: int = 0
    trimmed_tokens: int = 0
    cache_hits: int = 0
    tokens_saved: int = 0
    errors: int = 0
    estimated: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # error code → calls
    errors_by: dict[str, int] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_TOTALS_COLS = ("outcome, {reason}, COUNT(*), SUM(input_tokens), SUM(output_tokens), "
                "SUM(cached_tokens), SUM(cost_nusd), SUM(trimmed_tokens), SUM(tokens_saved), "
                "SUM({estimated})")


async def window_totals(store: LedgerStore, span: Span, *, now: float) -> Totals:
    first, end = span.bounds(now)
    if span.bucket == 60:
        cols = _TOTALS_COLS.format(
            reason="CASE WHEN outcome IN ('rejected', 'error') THEN error_code END",
            estimated="CASE WHEN exact THEN 0 ELSE 1 END")
        sql = f"SELECT {cols} FROM calls WHERE ts >= ? AND ts < ? GROUP BY 1, 2"
        rows = await store.query(sql, [first * 60, end * 60])
    else:
        table, col = _NAMES[span.bucket]
        cols = _TOTALS_COLS.format(reason="reason", estimated="estimated").replace(
            "COUNT(*)", "SUM(calls)")
        sql = f"SELECT {cols} FROM {table} WHERE {col} >= ? AND {col} < ? GROUP BY 1, 2"
        rows = await store.query(sql, [first, end])
    return _totals(rows)


def _totals(rows: list[tuple[Any, ...]]) -> Totals:
    acc = dict.fromkeys(("calls", "input_tokens", "output_tokens", "cached_tokens",
                         "cost_nusd", "trimmed_tokens", "tokens_saved", "estimated"), 0)
    by_outcome: dict[str, int] = {}
    refusals: dict[str, int] = {}
    errors_by: dict[str, int] = {}
    for outcome, reason, calls, inp, out, cached, cost, trimmed, saved, est in rows:
        n = as_int(calls)
        for name, value in zip(acc, (calls, inp, out, cached, cost, trimmed, saved, est),
                               strict=True):
            acc[name] += as_int(value)
        by_outcome[outcome] = by_outcome.get(outcome, 0) + n
        code = _name(reason) or "unknown"
        if outcome == "rejected":
            refusals[code] = refusals.get(code, 0) + n
        elif outcome == "error":
            errors_by[code] = errors_by.get(code, 0) + n
    return Totals(
        **acc, rejected=by_outcome.get("rejected", 0), trimmed=by_outcome.get("trimmed", 0),
        cache_hits=by_outcome.get("cached", 0), errors=by_outcome.get("error", 0),
        refusals=dict(sorted(refusals.items(), key=lambda kv: (-kv[1], kv[0]))),
        errors_by=dict(sorted(errors_by.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


# ---------------------------------------------------------------- names of the window


@dataclass(frozen=True, slots=True)
class NameSum:
    name: str | None
    calls: int
    total_tokens: int
    cost_nusd: int
    rejected: int


def _names_source(span: Span, now: float) -> tuple[str, str, int, int]:
    """(table, bucket column, first, end) of the rollup that covers the window: whole
    hours that overlap it, or its days for 30-day windows."""
    first, end = span.bounds(now)
    width = 86400 if span.bucket >= 86400 else 3600
    table, col = _NAMES[width]
    return table, col, (first * span.bucket) // width, (end * span.bucket - 1) // width + 1


async def names_in_window(store: LedgerStore, span: Span, dim: str, *,
                          now: float) -> list[NameSum]:
    """Calls, tokens and cost per feature, model, step or plan over the window's hours,
    costliest first."""
    if dim not in _LOW:
        raise InvalidRequest(f"cannot list {dim!r}{did_you_mean(dim, _LOW)}", param="by")
    table, col, first, end = _names_source(span, now)
    sql = (f"SELECT {_LOW[dim]}, SUM(calls), SUM(input_tokens + output_tokens), "
           "SUM(cost_nusd), SUM(CASE WHEN outcome = 'rejected' THEN calls ELSE 0 END) "
           f"FROM {table} WHERE {col} >= ? AND {col} < ? GROUP BY 1 ORDER BY 4 DESC, 3 DESC")
    rows = await store.query(sql, [first, end])
    return [NameSum(_name(r[0]), *(as_int(v) for v in r[1:])) for r in rows]


# ---------------------------------------------------------------- runs and keys


@dataclass(frozen=True, slots=True)
class RunSummary:
    run: str
    calls: int
    total_tokens: int
    cost_nusd: int
    rejected: int
    max_attempt: int | None
    first_ts: float
    last_ts: float
    owner: str | None = None  # a run's owner (`user.<user>`, `key.<key id>` or `-`)


def _days(span: Span, now: float) -> tuple[int, int]:
    first, end = span.bounds(now)
    return (first * span.bucket) // 86400, (end * span.bucket - 1) // 86400 + 1


_DAY_SQL = """SELECT value, SUM(calls), SUM(input_tokens + output_tokens), SUM(cost_nusd),
  SUM(rejected), MAX(max_attempt), MIN(first_ts), MAX(last_ts)
FROM rollup_ids WHERE dim = ? AND day >= ? AND day < ? GROUP BY value"""


# A run is its owner's (ledger/rollups.py, rollup_runs): one row per (run, owner).
_RUNS_SQL = """SELECT run, SUM(calls), SUM(input_tokens + output_tokens), SUM(cost_nusd),
  SUM(rejected), MAX(max_attempt), MIN(first_ts), MAX(last_ts), owner
FROM rollup_runs WHERE day >= ? AND day < ? GROUP BY run, owner"""


def _summary(r: tuple[Any, ...]) -> RunSummary:
    return RunSummary(str(r[0]), as_int(r[1]), as_int(r[2]), as_int(r[3]), as_int(r[4]),
                      None if r[5] is None else int(r[5]), float(r[6]), float(r[7]),
                      *(str(o) for o in r[8:]))


async def _day_rows(store: LedgerStore, dim: str, span: Span, now: float,
                    order: str, limit: int) -> list[RunSummary]:
    first, end = _days(span, now)
    sql = f"{_DAY_SQL} ORDER BY {order} LIMIT ?"
    rows = await store.query(sql, [dim, first, end, limit])
    return [_summary(r) for r in rows]


async def _run_rows(store: LedgerStore, span: Span, now: float, order: str,
                    limit: int, having: str = "") -> list[RunSummary]:
    first, end = _days(span, now)
    rows = await store.query(f"{_RUNS_SQL} {having} ORDER BY {order}, 9 LIMIT ?",
                             [first, end, limit])
    return [_summary(r) for r in rows]


async def costliest_runs(store: LedgerStore, span: Span, *, now: float,
                         limit: int = 15) -> list[RunSummary]:
    """Runs (each of its owner) with calls on the window's days, costliest first."""
    return await _run_rows(store, span, now, "4 DESC, 3 DESC, 1", limit)


async def most_looped_runs(store: LedgerStore, span: Span, *, now: float,
                           limit: int = 10) -> list[RunSummary]:
    """Runs with calls on the window's days by the highest attempt number they reached."""
    # HAVING, not a filter after LIMIT: PostgreSQL sorts NULL attempts first when DESC.
    return await _run_rows(store, span, now, "6 DESC, 4 DESC, 1", limit,
                           "HAVING MAX(max_attempt) > 1")


async def spend_by_key(store: LedgerStore, span: Span, *, now: float,
                       limit: int = 10_000) -> dict[str | None, RunSummary]:
    """Calls, tokens and cost per key id over the window's days ('' = no key → None)."""
    rows = await _day_rows(store, "key", span, now, "4 DESC, 1", limit)
    return {_name(r.run): r for r in rows}


# ---------------------------------------------------------------- what-if from the rollups


_WHAT_IF_SQL = """SELECT model, SUM(calls), SUM(input_tokens), SUM(output_tokens),
  SUM(cached_tokens), SUM(cache_write_tokens), SUM(cost_nusd)
FROM {table} WHERE {col} = ? AND outcome NOT IN ('rejected', 'cached')
  AND {bucket} >= ? AND {bucket} < ? GROUP BY model"""


def _price(rates: list[int], inp: int, out: int, cached: int, write: int) -> int:
    uncached = max(0, inp - cached - write)
    total = uncached * rates[0] + cached * rates[1] + write * rates[2] + out * rates[3]
    return -(-total // 1_000_000)


async def what_if_window(
    store: LedgerStore, target: ModelInfo, span: Span, *, now: float,
    step: str | None = None, feature: str | None = None,
    lookup: Callable[[str], ModelInfo | None] | None = None,
) -> WhatIf:
    """Re-price a step's (or a feature's) calls of the window with `target`'s prices, per
    hour (day) and model group: within 1 nano-USD a call of `tallygate what-if` (which
    prices each call, rounding each up)."""
    if (step is None) == (feature is None):
        raise InvalidRequest("what-if needs a step or a feature (one of them)")
    table, bucket, first, end = _names_source(span, now)
    col, name = ("step", step) if step is not None else ("feature", feature)
    sql = _WHAT_IF_SQL.format(table=table, col=col, bucket=bucket)
    rows = await store.query(sql, [name, first, end])
    rates = _rates(target)
    groups = sorted(
        (WhatIfGroup(_name(r[0]), *(as_int(v) for v in r[1:]),
                     what_if_nusd=_price(rates, as_int(r[2]), as_int(r[3]), as_int(r[4]),
                                         as_int(r[5])))
         for r in rows),
        key=lambda g: (-g.current_nusd, g.model or ""))
    width = 3600 if bucket == "hour" else 86400
    since, until = float(first * width), float(end * width)
    notes = _tokenizer_notes(target, [g.model for g in groups], lookup or (lambda _: None))
    notes.append(f"re-priced per {bucket} and model, so within 1 nano-USD a call of the "
                 "per-call figure of `tallygate what-if`")
    return WhatIf(step=step, model=target.name, since=since, until=until, groups=groups,
                  current_nusd=sum(g.current_nusd for g in groups),
                  what_if_nusd=sum(g.what_if_nusd for g in groups), notes=notes,
                  feature=feature)
