"""Workflow reports over the ledger: per-run step breakdown with review loops, the costliest
steps, the runs that looped most, and what-if re-pricing of a step on another model.

A *run* is X-Tallygate-Run, a *step* X-Tallygate-Step, and each distinct X-Tallygate-Attempt
(`step_attempt`) of a step is one *loop* (rows without an attempt number count as one loop).
A run's extra loops are the sum over its steps of (loops − 1).

A run belongs to its owner, as its budgets do (core/limits.py): the same run id sent by
two users is two runs, each with only its own calls. The owner is `user.<user>` (the
call's user), else `key.<key id>`, else `-`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tallygate.errors import InvalidRequest
from tallygate.ledger.base import LedgerStore
from tallygate.ledger.rollups import owner_sql
from tallygate.ledger.rows import time_filter
from tallygate.reports.usage import as_int
from tallygate.types import ModelInfo
from tallygate.units import from_iso, iso, usd


@dataclass(frozen=True, slots=True)
class LoopRow:
    attempt: int | None
    calls: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_nusd: int


@dataclass(frozen=True, slots=True)
class StepRow:
    step: str | None
    attempts: int
    calls: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_nusd: int
    loops: list[LoopRow]


@dataclass(frozen=True, slots=True)
class RunRow:
    run: str
    calls: int
    total_tokens: int
    cost_nusd: int
    extra_loops: int
    steps: list[StepRow]
    owner: str = "-"  # whose run: `user.<user>`, `key.<key id>` or `-` (module docstring)


@dataclass(frozen=True, slots=True)
class StepRank:
    """One step name across every run in the report."""

    step: str | None
    runs: int
    calls: int
    attempts: int
    max_attempts: int
    total_tokens: int
    cost_nusd: int


@dataclass(frozen=True, slots=True)
class RunsReport:
    since: float | None
    until: float | None
    runs: list[RunRow] = field(default_factory=list)
    costliest_steps: list[StepRank] = field(default_factory=list)
    most_loops: list[RunRow] = field(default_factory=list)


_OWNER = owner_sql()
_RUNS_SQL = f"""
SELECT {_OWNER}, run, step, step_attempt, COUNT(*), SUM(input_tokens), SUM(output_tokens),
       SUM(input_tokens + output_tokens), SUM(cost_nusd), MIN(ts)
FROM calls WHERE run IS NOT NULL AND {{where}}
GROUP BY 1, run, step, step_attempt"""


def _sums(rows: Sequence[Any], *names: str) -> dict[str, int]:
    """Each named field summed over `rows` (a step's loops, a run's steps …)."""
    return {name: sum(getattr(r, name) for r in rows) for name in names}


def _step_row(step: str | None, loops: list[tuple[LoopRow, float]]) -> tuple[StepRow, float]:
    ordered = sorted(loops, key=lambda lt: (lt[0].attempt is not None, lt[0].attempt or 0))
    rows = [lr for lr, _ in ordered]
    sums = _sums(rows, "calls", "input_tokens", "output_tokens", "total_tokens", "cost_nusd")
    return StepRow(step=step, attempts=len(rows), loops=rows, **sums), min(t for _, t in loops)


def _assemble(raw: list[tuple[Any, ...]]) -> list[RunRow]:
    grouped: dict[tuple[str, str], dict[str | None, list[tuple[LoopRow, float]]]] = {}
    for owner, run, step, attempt, calls, inp, out, total, cost, first in raw:
        loop = LoopRow(
            None if attempt is None else int(attempt),
            as_int(calls), as_int(inp), as_int(out), as_int(total), as_int(cost),
        )
        grouped.setdefault((str(run), str(owner)), {}).setdefault(step, []).append(
            (loop, float(first)))
    runs: list[tuple[float, RunRow]] = []
    for (run, owner), steps in grouped.items():
        built = sorted(
            (_step_row(step, loops) for step, loops in steps.items()),
            key=lambda st: (st[1], st[0].step or ""),
        )
        rows = [s for s, _ in built]
        runs.append((built[0][1], RunRow(
            run=run, steps=rows, extra_loops=sum(s.attempts - 1 for s in rows), owner=owner,
            **_sums(rows, "calls", "total_tokens", "cost_nusd"))))
    return [r for _, r in sorted(runs, key=lambda fr: (fr[0], fr[1].run, fr[1].owner))]


def _rank_steps(runs: list[RunRow]) -> list[StepRank]:
    acc: dict[str | None, list[StepRow]] = {}
    for run in runs:
        for step in run.steps:
            acc.setdefault(step.step, []).append(step)
    ranks = [
        StepRank(step=name, runs=len(rows), max_attempts=max(r.attempts for r in rows),
                 **_sums(rows, "calls", "attempts", "total_tokens", "cost_nusd"))
        for name, rows in acc.items()
    ]
    return sorted(ranks, key=lambda s: (-s.cost_nusd, -s.total_tokens, s.step or ""))


async def runs_report(
    store: LedgerStore, *, run: str | None = None, since: float | None = None,
    until: float | None = None, owner: str | None = None,
) -> RunsReport:
    """Each run's steps and loops (oldest run first), the costliest step names, and the runs
    with the most extra loops (ties broken by cost). `run` keeps the runs of that id (one
    per owner), `owner` those of one owner (`user.alice`)."""
    where, params = time_filter(since, until)
    if run is not None:
        where += " AND run = ?"
        params.append(run)
    if owner is not None:
        where += f" AND {_OWNER} = ?"
        params.append(owner)
    raw = await store.query(_RUNS_SQL.format(where=where), params)
    runs = _assemble(raw)
    looped = sorted(
        (r for r in runs if r.extra_loops > 0),
        key=lambda r: (-r.extra_loops, -r.cost_nusd, r.run, r.owner),
    )
    return RunsReport(since, until, runs, _rank_steps(runs), looped)


def runs_json(report: RunsReport) -> dict[str, Any]:
    def with_usd(d: dict[str, Any]) -> dict[str, Any]:
        if "cost_nusd" in d:
            d["cost_usd"] = usd(d["cost_nusd"])
        for k in ("steps", "loops"):
            if k in d:
                d[k] = [with_usd(x) for x in d[k]]
        return d

    return {
        "since": iso(report.since),
        "until": iso(report.until),
        "runs": [with_usd(asdict(r)) for r in report.runs],
        "costliest_steps": [with_usd(asdict(s)) for s in report.costliest_steps],
        "most_loops": [
            {"run": r.run, "owner": r.owner, "extra_loops": r.extra_loops,
             "cost_nusd": r.cost_nusd, "cost_usd": usd(r.cost_nusd)}
            for r in report.most_loops
        ],
    }


# ---------------------------------------------------------------- what-if re-pricing


@dataclass(frozen=True, slots=True)
class WhatIfGroup:
    model: str | None  # the model the calls used
    calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    current_nusd: int
    what_if_nusd: int


@dataclass(frozen=True, slots=True)
class WhatIf:
    step: str | None  # the step re-priced, or None when it is a feature
    model: str
    since: float | None
    until: float | None
    groups: list[WhatIfGroup]
    current_nusd: int
    what_if_nusd: int
    notes: list[str]
    feature: str | None = None  # the feature re-priced (what-if --feature)

    @property
    def saving_nusd(self) -> int:
        """Positive when the other model is cheaper; negative is an extra cost."""
        return self.current_nusd - self.what_if_nusd

    @property
    def subject(self) -> str:
        """`step 'review'` or `feature 'chat'`, for titles."""
        return f"step {self.step!r}" if self.step is not None else f"feature {self.feature!r}"


_GREATEST = {"sqlite": "MAX", "postgres": "GREATEST"}

# Each row is priced like ModelInfo.cost_nusd (ceil to the nano-dollar per call), in SQL.
_WHAT_IF_SQL = """
SELECT COALESCE(model_used, model_requested), COUNT(*), SUM(input_tokens), SUM(output_tokens),
       SUM(cached_tokens), SUM(cache_write_tokens), SUM(cost_nusd),
       SUM(({greatest}(0, input_tokens - cached_tokens - cache_write_tokens) * ?
            + cached_tokens * ? + cache_write_tokens * ? + output_tokens * ? + 999999)
           / 1000000)
FROM calls WHERE {column} = ? AND outcome NOT IN ('rejected', 'cached') AND {where}
GROUP BY COALESCE(model_used, model_requested)"""


def _rates(m: ModelInfo) -> list[int]:
    cached = m.input_nusd_per_mtok if m.cached_input_nusd_per_mtok is None else (
        m.cached_input_nusd_per_mtok)
    write = m.input_nusd_per_mtok if m.cache_write_nusd_per_mtok is None else (
        m.cache_write_nusd_per_mtok)
    return [m.input_nusd_per_mtok, cached, write, m.output_nusd_per_mtok]


def _tokenizer_notes(
    target: ModelInfo, sources: list[str | None], lookup: Callable[[str], ModelInfo | None]
) -> list[str]:
    notes = ["token counts are kept as recorded; only the prices change"]
    for name in sources:
        src = lookup(name) if name else None
        if src is None:
            notes.append(f"{name or 'unknown model'}: not in the catalog, its tokenizer is "
                         f"unknown; {target.name} may count the same text differently")
        elif src.encoding != target.encoding:
            notes.append(
                f"{name} counts with {src.encoding or 'an undisclosed tokenizer'}, "
                f"{target.name} with {target.encoding or 'an undisclosed tokenizer'}: the "
                "same text would have a different token count, the what-if is approximate"
            )
    return notes


async def what_if(
    store: LedgerStore, step: str | None, target: ModelInfo, *, since: float | None = None,
    until: float | None = None, lookup: Callable[[str], ModelInfo | None] | None = None,
    feature: str | None = None,
) -> WhatIf:
    """Re-price the recorded calls of `step` (or of `feature`: give one of them; rejected
    calls and cache hits excluded: they cost nothing either way) with `target`'s prices,
    same token counts."""
    if (step is None) == (feature is None):
        raise InvalidRequest("what-if needs a step or a feature (one of them)")
    where, params = time_filter(since, until)
    column = "step" if step is not None else "feature"
    sql = _WHAT_IF_SQL.format(greatest=_GREATEST[store.dialect], where=where, column=column)
    raw = await store.query(sql, [*_rates(target), step if step is not None else feature,
                                  *params])
    groups = sorted(
        (WhatIfGroup(None if r[0] is None else str(r[0]), *(as_int(v) for v in r[1:]))
         for r in raw),
        key=lambda g: (-g.current_nusd, g.model or ""),
    )
    return WhatIf(
        step=step, model=target.name, since=since, until=until, groups=groups,
        current_nusd=sum(g.current_nusd for g in groups),
        what_if_nusd=sum(g.what_if_nusd for g in groups),
        notes=_tokenizer_notes(target, [g.model for g in groups], lookup or (lambda _: None)),
        feature=feature,
    )


def what_if_json(w: WhatIf) -> dict[str, Any]:
    return {
        "step": w.step, "feature": w.feature, "model": w.model, "since": iso(w.since),
        "until": iso(w.until),
        "current_nusd": w.current_nusd, "what_if_nusd": w.what_if_nusd,
        "saving_nusd": w.saving_nusd, "current_usd": usd(w.current_nusd),
        "what_if_usd": usd(w.what_if_nusd), "saving_usd": usd(w.saving_nusd),
        "groups": [
            {**asdict(g), "current_usd": usd(g.current_nusd), "what_if_usd": usd(g.what_if_nusd)}
            for g in w.groups
        ],
        "notes": w.notes,
    }


# ---------------------------------------------------------------- back from JSON
# (what a gateway's /admin/reports/runs and /admin/reports/what-if return)


def _fields(cls: type, item: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in item.items() if k in names}



def runs_from_json(data: dict[str, Any]) -> RunsReport:
    def step(item: dict[str, Any]) -> StepRow:
        loops = [LoopRow(**_fields(LoopRow, loop)) for loop in item.get("loops", [])]
        return StepRow(**{**_fields(StepRow, item), "loops": loops})

    def run(item: dict[str, Any]) -> RunRow:
        return RunRow(**{**_fields(RunRow, item),
                         "steps": [step(s) for s in item.get("steps", [])]})

    runs = [run(r) for r in data.get("runs", [])]
    by_name = {(r.run, r.owner): r for r in runs}
    looped = ((r["run"], r.get("owner", "-")) for r in data.get("most_loops", []))
    return RunsReport(
        from_iso(data.get("since")), from_iso(data.get("until")), runs,
        [StepRank(**_fields(StepRank, s)) for s in data.get("costliest_steps", [])],
        [by_name[k] for k in looped if k in by_name],
    )


def what_if_from_json(data: dict[str, Any]) -> WhatIf:
    step, feature = data.get("step"), data.get("feature")
    return WhatIf(
        step=None if step is None else str(step), model=str(data["model"]),
        feature=None if feature is None else str(feature), since=from_iso(data.get("since")),
        until=from_iso(data.get("until")),
        groups=[WhatIfGroup(**_fields(WhatIfGroup, g)) for g in data.get("groups", [])],
        current_nusd=int(data["current_nusd"]), what_if_nusd=int(data["what_if_nusd"]),
        notes=[str(n) for n in data.get("notes", [])],
    )
