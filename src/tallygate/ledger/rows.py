"""CallRecord ↔ database row ↔ journal line. One place knows the column order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import orjson

from tallygate.errors import InvalidRequest
from tallygate.ledger.migrations import COLUMN_NAMES, quote
from tallygate.types import CallRecord, Outcome

_FIELDS = tuple(f.name for f in fields(CallRecord))
if _FIELDS != COLUMN_NAMES:  # a new CallRecord field needs a migration
    raise RuntimeError(f"ledger columns out of date with CallRecord: {_FIELDS} vs {COLUMN_NAMES}")

_FIELD_SET = frozenset(_FIELDS)
_BOOL_AT = tuple(i for i, name in enumerate(_FIELDS) if name in ("exact", "stream"))
_OUTCOME_AT = _FIELDS.index("outcome")


def to_row(record: CallRecord) -> tuple[Any, ...]:
    """Column values in COLUMN_NAMES order (outcome as its text value)."""
    values = [getattr(record, name) for name in _FIELDS]
    values[_OUTCOME_AT] = str(record.outcome)
    return tuple(values)


def from_row(row: Sequence[Any]) -> CallRecord:
    values = list(row)
    values[_OUTCOME_AT] = Outcome(values[_OUTCOME_AT])
    for i in _BOOL_AT:
        values[i] = bool(values[i])
    return CallRecord(*values)


def to_line(record: CallRecord) -> bytes:
    """One journal line: orjson of the record plus a newline."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def from_line(line: bytes) -> CallRecord:
    """A journal line back to its record; a line written before a field was added or
    removed still reads (missing fields take their defaults, gone ones are dropped)."""
    try:
        data = orjson.loads(line)
        data["outcome"] = Outcome(data["outcome"])
        return CallRecord(**{k: v for k, v in data.items() if k in _FIELD_SET})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"bad ledger journal line: {exc}") from exc


_SELECT = f"SELECT {', '.join(quote(c) for c in COLUMN_NAMES)} FROM calls"


def time_filter(since: float | None, until: float | None) -> tuple[str, list[Any]]:
    """A WHERE condition (always valid) and its parameters for since <= ts < until."""
    where, params = ["1=1"], []
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if until is not None:
        where.append("ts < ?")
        params.append(until)
    return " AND ".join(where), params


def range_sql(since: float | None, until: float | None) -> tuple[str, list[Any]]:
    """SELECT of every column for since <= ts < until (`?` placeholders)."""
    where, params = time_filter(since, until)
    return f"{_SELECT} WHERE {where} ORDER BY ts, request_id", params


class SqlReads:
    """The read methods both SQL ledgers share, built on their own `query()`."""

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def records(
        self, *, since: float | None = None, until: float | None = None
    ) -> list[CallRecord]:
        sql, params = range_sql(since, until)
        return [from_row(r) for r in await self.query(sql, params)]

    async def count(self) -> int:
        rows = await self.query("SELECT COUNT(*) FROM calls")
        return int(rows[0][0])

    async def schema_version(self) -> int:
        rows = await self.query("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0] or 0)
