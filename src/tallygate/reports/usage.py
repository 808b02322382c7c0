"""Usage reports over the ledger: by feature, user, model, run, step or day.

Aggregation runs in SQL (the same statement on SQLite and PostgreSQL, with a dialect
expression for the day and for null-safe joins). Money stays integer nano-USD; USD is
derived exactly at the edge: `usd_text()` is the exact decimal text, JSON carries it as a
JSON number written verbatim (orjson.Fragment), never through a float.

Latency percentiles are nearest-rank (the ceil(p·n)-th smallest latency) over the calls that
were not rejected, computed with window functions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal
from typing import Any

import orjson

from tallygate.config.names import did_you_mean
from tallygate.errors import InvalidRequest
from tallygate.ledger.base import LedgerStore
from tallygate.ledger.rollups import owner_sql
from tallygate.ledger.rows import time_filter
from tallygate.units import from_iso, iso, usd

DIMENSIONS: tuple[str, ...] = (
    "feature", "user", "model", "run", "step", "day", "plan", "key", "provider")

_KEY_SQL = {
    "feature": "feature",
    "user": '"user"',
    "model": "COALESCE(model_used, model_requested)",
    "run": "run",
    "step": "step",
    "plan": "plan",
    "key": "key_id",
    "provider": "provider",
}
_DAY_SQL = {
    "sqlite": "date(ts, 'unixepoch')",
    "postgres": "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
_SAME = {"sqlite": "{a} IS {b}", "postgres": "{a} IS NOT DISTINCT FROM {b}"}
# A run belongs to its owner (reports/runs.py): `--by run` has one row per (run, owner);
# the calls without a run stay one row.
_OWNER_SQL = {"run": f"CASE WHEN run IS NULL THEN NULL ELSE {owner_sql()} END"}
_NO_OWNER = "CAST(NULL AS TEXT)"


# ---------------------------------------------------------------- money and time at the edge





def dumps(obj: Any) -> bytes:
    """orjson with Decimals written as exact JSON numbers."""

    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            return orjson.Fragment(format(value, "f"))
        raise TypeError(type(value).__name__)

    return orjson.dumps(obj, default=default, option=orjson.OPT_INDENT_2)


def as_int(value: Any) -> int:
    """SUM() is NUMERIC on PostgreSQL and may be NULL: normalise to int."""
    return int(value) if value is not None else 0


# ---------------------------------------------------------------- the usage report


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str | None
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost_nusd: int = 0
    rejected: int = 0
    trimmed: int = 0
    trimmed_tokens: int = 0
    cache_hits: int = 0
    tokens_saved: int = 0
    errors: int = 0
    estimated: int = 0  # calls whose tokens are our estimate, not provider-reported
    p50_latency_ms: int | None = None
    p95_latency_ms: int | None = None
    owner: str | None = None  # by run: whose run (`user.<user>`, `key.<key id>` or `-`)

    @property
    def cost_usd(self) -> Decimal:
        return usd(self.cost_nusd)


@dataclass(frozen=True, slots=True)
class UsageReport:
    by: str
    since: float | None
    until: float | None
    rows: list[UsageRow] = field(default_factory=list)
    total: UsageRow = field(default_factory=lambda: UsageRow(key=None))


_SUMS = """COUNT(*) AS calls,
  SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(cache_write_tokens),
  SUM(reasoning_tokens), SUM(input_tokens + output_tokens), SUM(cost_nusd),
  SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END),
  SUM(CASE WHEN outcome = 'trimmed' THEN 1 ELSE 0 END), SUM(trimmed_tokens),
  SUM(CASE WHEN outcome = 'cached' THEN 1 ELSE 0 END), SUM(tokens_saved),
  SUM(CASE WHEN outcome = 'error' THEN 1 ELSE 0 END),
  SUM(CASE WHEN exact THEN 0 ELSE 1 END)"""


def _usage_sql(key_sql: str, dialect: str, where: str, owner_sql: str = _NO_OWNER) -> str:
    same = " AND ".join(_SAME[dialect].format(a=f"agg.{c}", b=f"pct.{c}") for c in "ko")
    return f"""
WITH base AS (
  SELECT {key_sql} AS k, {owner_sql} AS o, input_tokens, output_tokens, cached_tokens,
         cache_write_tokens, reasoning_tokens, cost_nusd, outcome, trimmed_tokens, tokens_saved,
         exact, latency_ms
  FROM calls WHERE {where}
), ranked AS (
  SELECT k, o, latency_ms,
         ROW_NUMBER() OVER (PARTITION BY k, o ORDER BY latency_ms) AS rn,
         COUNT(*) OVER (PARTITION BY k, o) AS n
  FROM base WHERE outcome <> 'rejected'
), pct AS (
  SELECT k, o, MAX(CASE WHEN rn = (50 * n + 99) / 100 THEN latency_ms END) AS p50,
               MAX(CASE WHEN rn = (95 * n + 99) / 100 THEN latency_ms END) AS p95
  FROM ranked GROUP BY k, o
), agg AS (
  SELECT k, {_SUMS}, o FROM base GROUP BY k, o
)
SELECT agg.*, pct.p50, pct.p95 FROM agg LEFT JOIN pct ON {same}"""


def _row(values: tuple[Any, ...]) -> UsageRow:
    key, *nums, owner, p50, p95 = values
    return UsageRow(
        None if key is None else str(key),
        *(as_int(v) for v in nums),
        p50_latency_ms=None if p50 is None else int(p50),
        p95_latency_ms=None if p95 is None else int(p95),
        owner=None if owner is None else str(owner),
    )


def _order(by: str, rows: list[UsageRow]) -> list[UsageRow]:
    if by == "day":
        return sorted(rows, key=lambda r: r.key or "")
    return sorted(
        rows,
        key=lambda r: (-r.cost_nusd, -r.total_tokens, -r.calls, r.key is None, r.key or "",
                       r.owner or ""),
    )


async def usage_report(
    store: LedgerStore, by: str = "feature", *, since: float | None = None,
    until: float | None = None,
) -> UsageReport:
    """Calls, tokens, cost, rejections, trims, cache hits, errors and latency per `by`."""
    if by not in DIMENSIONS:
        raise InvalidRequest(f"cannot report by {by!r}{did_you_mean(by, DIMENSIONS)}: use one "
                             f"of {', '.join(DIMENSIONS)}", param="by")
    key_sql = _DAY_SQL[store.dialect] if by == "day" else _KEY_SQL[by]
    where, params = time_filter(since, until)
    owner = _OWNER_SQL.get(by, _NO_OWNER)
    rows = await store.query(_usage_sql(key_sql, store.dialect, where, owner), params)
    totals = await store.query(_usage_sql("CAST(NULL AS TEXT)", store.dialect, where), params)
    total = _row(totals[0]) if totals else UsageRow(key=None)
    return UsageReport(by, since, until, _order(by, [_row(r) for r in rows]), total)


def row_json(row: UsageRow) -> dict[str, Any]:
    data = asdict(row)
    data["cost_usd"] = row.cost_usd
    return data


def usage_json(report: UsageReport) -> dict[str, Any]:
    """The report's JSON shape (docs/ledger.md, Reports):
    {"by", "since", "until", "rows": [...], "total": {...}}."""
    return {
        "by": report.by,
        "since": iso(report.since),
        "until": iso(report.until),
        "rows": [row_json(r) for r in report.rows],
        "total": row_json(report.total),
    }


def usage_from_json(data: dict[str, Any]) -> UsageReport:
    """A report back from its JSON shape (what a gateway's /admin/reports returns)."""
    names = {f.name for f in fields(UsageRow)}

    def row(item: dict[str, Any]) -> UsageRow:
        return UsageRow(**{k: v for k, v in item.items() if k in names})

    return UsageReport(str(data["by"]), from_iso(data.get("since")), from_iso(data.get("until")),
                       [row(r) for r in data.get("rows", [])], row(data["total"]))
