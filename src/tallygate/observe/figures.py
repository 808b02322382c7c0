"""Window figures for alert rules, read from the shared ledger.

Why the ledger: every replica writes its rows there (PostgreSQL when there are several),
so a sum over the window is the sum across replicas, and the top contributors come from
the same query engine. The ledger lags the calls by the writer's flush interval (tens of
milliseconds), far below an alert's evaluation period."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from tallygate.ledger.base import LedgerStore

CONTRIBUTOR_COLUMNS = ("feature", "user", "step")
TOP_N = 5


@dataclass(frozen=True, slots=True)
class WindowFigures:
    calls: int
    rejected: int
    cost_nusd: int
    tokens: int
    top: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class FiguresSource(Protocol):
    async def window_figures(self, start: float, end: float) -> WindowFigures: ...


class LedgerFigures:
    """Totals and top contributors of calls with start <= ts < end."""

    def __init__(self, ledger: LedgerStore, top_n: int = TOP_N) -> None:
        self.ledger = ledger
        self.top_n = top_n

    async def window_figures(self, start: float, end: float) -> WindowFigures:
        rows = await self.ledger.query(
            "SELECT COUNT(*), COALESCE(SUM(cost_nusd), 0), "
            "COALESCE(SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(input_tokens + output_tokens), 0) "
            "FROM calls WHERE ts >= ? AND ts < ?",
            (start, end),
        )
        calls, cost, rejected, tokens = (int(v or 0) for v in rows[0])
        top = {}
        if calls:
            for column in CONTRIBUTOR_COLUMNS:
                top[column] = await self._top(column, start, end)
        return WindowFigures(calls, rejected, cost, tokens, top)

    async def _top(self, column: str, start: float, end: float) -> list[dict[str, Any]]:
        quoted = f'"{column}"'  # `user` is reserved in PostgreSQL
        rows = await self.ledger.query(
            f"SELECT {quoted}, COUNT(*), COALESCE(SUM(cost_nusd), 0), "
            "COALESCE(SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(input_tokens + output_tokens), 0) "
            f"FROM calls WHERE ts >= ? AND ts < ? GROUP BY {quoted} "
            "ORDER BY 3 DESC, 2 DESC LIMIT ?",
            (start, end, self.top_n),
        )
        return [
            {column: name, "calls": int(n), "cost_nusd": int(cost),
             "rejected": int(rej), "tokens": int(tok)}
            for name, n, cost, rej, tok in rows
        ]
