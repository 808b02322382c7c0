"""The dashboard's read-only pages: overview, budgets, runs (and one run), what-if, keys,
flags and alerts. Each builds its figures from the read models in reports/ and renders a
template; nothing here changes anything."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tallygate.core.limits import parse_key
from tallygate.dashboard.charts import hbars, stacked_bars
from tallygate.dashboard.session import Session
from tallygate.dashboard.sources import Sources
from tallygate.dashboard.web import render
from tallygate.errors import InvalidRequest, TallygateError
from tallygate.reports import overview as ov
from tallygate.reports.budgets import BudgetRow, Query, budget_rows, human_delta
from tallygate.reports.flags import flag_list
from tallygate.reports.runs import runs_report
from tallygate.units import iso, usd_display

MAX_NAME = 256
# The notice after a change (?done=…): fixed texts, nothing from the URL is shown.
DONE = {"updated": "Key updated.", "revoked": "Key revoked.",
        "flag": "Flag saved: every gateway applies it within a second."}


def _span(request: Request, default: str = "day") -> ov.Span:
    return ov.span_of(request.query_params.get("window", default))


def _bounded(request: Request, name: str) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and (len(value) > MAX_NAME or not value.isprintable()):
        raise InvalidRequest(f"'{name}' is 1-{MAX_NAME} printable characters.", param=name)
    return value


class Pages:
    def __init__(self, src: Sources, base: Any) -> None:
        self.src = src
        self.base = base  # session → the context every page has (nav, role, csrf)

    def _ctx(self, session: Session, page: str, **more: Any) -> dict[str, Any]:
        return self.base(session) | {"page": page, **more}

    @staticmethod
    def _done(request: Request) -> str | None:
        return DONE.get(request.query_params.get("done", ""))

    # ------------------------------------------------------------------ overview

    async def overview(self, request: Request, session: Session) -> Response:
        span = _span(request)
        by = ov.stack_of(request.query_params.get("by", "feature"))
        await self.src.fresh()
        now = self.src.clock()
        series = await ov.timeseries(self.src.ledger, span, by, now=now)
        totals = await ov.window_totals(self.src.ledger, span, now=now)
        labels = series.labels()
        charts = {
            "tokens": stacked_bars(series.tokens, labels, f"Tokens by {by}, {span.label}"),
            "cost": stacked_bars(series.cost_nusd, labels, f"Cost by {by}, {span.label}",
                                 fmt=usd_axis, unit=""),
        }
        try:
            tight = (await self._budgets(Query()))[:5]
        except TallygateError:  # the budgets page says why; the overview goes on
            tight = []
        return render("overview.html", self._ctx(
            session, "overview", span=span, spans=ov.SPANS, by=by, stacks=ov.STACKS,
            totals=totals, charts=charts, tight=tight, now=iso(now)))

    # ------------------------------------------------------------------ budgets

    async def _budgets(self, q: Query) -> list[dict[str, Any]]:
        if self.src.store is None:
            return []
        keys = await self.src.keys.list(include_revoked=False)
        now = self.src.clock()
        rows = await budget_rows(self.src.policy, q, self.src.store, keys, now)
        return sorted((_budget_view(r, now) for r in rows),
                      key=lambda d: (-d["fraction"], d["key"]))

    async def budgets(self, request: Request, session: Session) -> Response:
        q = Query(user=_bounded(request, "user"), key=_bounded(request, "key"),
                  feature=_bounded(request, "feature"), plan=_bounded(request, "plan"),
                  run=_bounded(request, "run"))
        problem, status = self.src.store_problem, 200
        rows: list[dict[str, Any]] = []
        try:
            rows = await self._budgets(q)
        except TallygateError as exc:
            problem, status = exc.message, exc.status
        return render("budgets.html", self._ctx(session, "budgets", rows=rows, q=q,
                                                problem=problem), status)

    # ------------------------------------------------------------------ runs

    async def runs(self, request: Request, session: Session) -> Response:
        span = _span(request, "day")
        await self.src.fresh()
        now = self.src.clock()
        costly = await ov.costliest_runs(self.src.ledger, span, now=now)
        looped = await ov.most_looped_runs(self.src.ledger, span, now=now)
        exact = await asyncio.gather(*(runs_report(self.src.ledger, run=r.run, owner=r.owner)
                                       for r in looped))
        # a run is its owner's: extra loops per (run, owner), as the rollups list them
        loops = {(run.run, run.owner): run.extra_loops for rep in exact for run in rep.runs}
        steps = await ov.names_in_window(self.src.ledger, span, "step", now=now)
        bars = hbars([(f"{r.run} ({r.owner})", loops.get((r.run, r.owner), 0),
                       f"{loops.get((r.run, r.owner), 0)} extra loops, "
                       f"{usd_display(r.cost_nusd)}") for r in looped], "Runs that looped most")
        return render("runs.html", self._ctx(
            session, "runs", span=span, spans=ov.SPANS, costly=costly, looped=looped,
            loops=loops, steps=steps, bars=bars, tiers=self.src.policy.tiers))

    async def run(self, request: Request, session: Session) -> Response:
        name = request.path_params["run"]
        if not name or len(name) > MAX_NAME:
            raise InvalidRequest(f"A run id is 1-{MAX_NAME} characters.", param="run")
        owner = _bounded(request, "owner")  # one owner's run; without it, every owner's
        await self.src.fresh()
        report = await runs_report(self.src.ledger, run=name, owner=owner)
        return render("run.html", self._ctx(session, "runs", name=name, runs=report.runs,
                                            owner=owner, tiers=self.src.policy.tiers),
                      200 if report.runs else 404)

    async def what_if(self, request: Request, session: Session) -> Response:
        span = _span(request, "month")
        step, feature = _bounded(request, "step"), _bounded(request, "feature")
        model = _bounded(request, "model")
        result, error = None, None
        if model and (step or feature):
            try:
                target = self.src.catalog.get(model)
                await self.src.fresh()
                result = await ov.what_if_window(
                    self.src.ledger, target, span, now=self.src.clock(), step=step,
                    feature=None if step else feature, lookup=self.src.catalog.find)
            except TallygateError as exc:
                error = exc.message
        return render("what_if.html", self._ctx(
            session, "runs", span=span, spans=ov.SPANS, step=step, feature=feature,
            model=model, result=result, error=error, tiers=self.src.policy.tiers),
            400 if error else 200)

    # ------------------------------------------------------------------ keys, flags, alerts

    async def keys_context(self, request: Request, session: Session) -> dict[str, Any]:
        show_all = request.query_params.get("all") == "1"
        span = _span(request, "month")
        await self.src.fresh()
        keys = await self.src.keys.list(include_revoked=show_all)
        spend = await ov.spend_by_key(self.src.ledger, span, now=self.src.clock())
        return self._ctx(session, "keys", keys=keys, spend=spend, span=span, spans=ov.SPANS,
                         show_all=show_all, plans=sorted(self.src.policy.plans),
                         done=self._done(request), now=self.src.clock())

    async def keys(self, request: Request, session: Session) -> Response:
        return render("keys.html", await self.keys_context(request, session))

    async def key(self, request: Request, session: Session) -> Response:
        key = await self.src.keys.get(request.path_params["key_id"][:64])
        if key is None:
            raise InvalidRequest("No such key.", param="id")
        return render("key_edit.html", self._ctx(session, "keys", key=key, error=None,
                                                 plans=sorted(self.src.policy.plans)))

    async def flags(self, request: Request, session: Session) -> Response:
        flags: list[dict[str, object]] = []
        problem = self.src.store_problem
        if self.src.store is not None:
            try:
                flags = await flag_list(self.src.store, self.src.static_flags)
            except TallygateError as exc:
                problem = exc.message
        return render("flags.html", self._ctx(session, "flags", flags=flags, problem=problem,
                                              done=self._done(request)))

    async def alerts(self, request: Request, session: Session) -> Response:
        del request
        fired = await self.src.alerts.recent(100)
        items = [{"payload": p, "text": orjson.dumps(p, option=orjson.OPT_INDENT_2).decode()}
                 for p in fired]
        return render("alerts.html", self._ctx(session, "alerts", items=items,
                                               rules=self.src.policy.alerts))


def usd_axis(nusd: int) -> str:
    """Money on a chart axis: enough places that small amounts are not all $0.0000."""
    places = 2 if nusd >= 10 * 10**9 else 4 if nusd >= 10**7 else 6
    return usd_display(nusd, places)


def _budget_view(row: BudgetRow, now: float) -> dict[str, Any]:
    u, h = row.usage, row.hold
    taken = u.used + u.reserved
    fraction = taken / u.limit if u.limit else 1.0
    cost = h.metric.value == "cost"
    show = usd_display if cost else (lambda v: f"{v:,}")
    parsed = parse_key(h.key)
    return {
        "key": h.key, "scope": parsed.scope, "id": parsed.ident or "",
        "metric": h.metric.value, "window": h.window.value + (" (rolling)" if h.rolling else ""),
        "limit": show(u.limit), "used": show(u.used), "reserved": show(u.reserved),
        "remaining": show(u.remaining), "fraction": fraction,
        "percent": f"{min(fraction, 9.99) * 100:.0f}%",
        # A lifetime limit (window "run") never resets.
        "reset_in": "never (run)" if math.isinf(u.reset_at) else human_delta(u.reset_at - now),
        "reset_at": "" if math.isinf(u.reset_at) else iso(u.reset_at),
        "raw": {"limit": u.limit, "used": u.used, "reserved": u.reserved,
                "remaining": u.remaining},
    }
