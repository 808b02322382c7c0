"""Read-only admin routes over a running gateway's own storage: `GET /admin/budgets`
(what `tallygate budgets --url` shows), `GET /admin/reports` (`tallygate report --url`),
`GET /admin/reports/runs` (`report runs --url`) and `GET /admin/reports/what-if`
(`what-if --url`). Same admin key and error format as /admin/keys."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tallygate.errors import InvalidRequest
from tallygate.gateway.admin.guard import AdminGuard, guarded
from tallygate.gateway.throttle import AuthThrottle
from tallygate.reports.budgets import Query, budget_rows, row_json
from tallygate.reports.runs import runs_json, runs_report, what_if, what_if_json
from tallygate.reports.usage import dumps, usage_json, usage_report
from tallygate.units import iso_seconds, parse_when

if TYPE_CHECKING:
    from tallygate.runtime import Runtime


def report_routes(rt: Runtime, admin_key: str | None,
                  throttle: AuthThrottle | None = None) -> list[Route]:
    guard = AdminGuard(admin_key, throttle)

    async def budgets(request: Request) -> Response:
        p = request.query_params
        q = Query(p.get("user"), p.get("key"), p.get("feature"), p.get("plan"),
                  p.get("model"), p.get("run"))
        now = time.time()
        keys = await rt.keys.list(include_revoked=True)
        rows = await budget_rows(rt.policy, q, rt.store, keys, now)
        return _exact_json({"now": iso_seconds(now), "limits": [row_json(r, now) for r in rows]})

    async def reports(request: Request) -> Response:
        since, until = await _window(request)
        by = request.query_params.get("by", "feature")  # usage_report refuses unknown ones
        report = await usage_report(rt.ledger, by, since=since, until=until)
        return _exact_json(usage_json(report))

    async def runs(request: Request) -> Response:
        since, until = await _window(request)
        report = await runs_report(rt.ledger, run=request.query_params.get("run"),
                                   owner=request.query_params.get("owner"),
                                   since=since, until=until)
        return _exact_json(runs_json(report))

    async def repriced(request: Request) -> Response:
        p = request.query_params
        step, feature, model = p.get("step"), p.get("feature"), p.get("model")
        if not model or bool(step) == bool(feature):
            raise InvalidRequest("what-if needs ?step=STEP&model=MODEL "
                                 "(or ?feature=FEATURE&model=MODEL)")
        target = rt.catalog.get(model)  # unknown → 400 with close names
        since, until = await _window(request)
        result = await what_if(rt.ledger, step or None, target, since=since, until=until,
                               lookup=rt.catalog.find, feature=feature or None)
        return _exact_json(what_if_json(result))

    async def _window(request: Request) -> tuple[float | None, float | None]:
        """?since / ?until, after the rows still in the writer's batch are written."""
        p = request.query_params
        now = time.time()
        since = parse_when(p["since"], now) if p.get("since") else None
        until = parse_when(p["until"], now) if p.get("until") else None
        await rt.writer.flush()
        return since, until

    return [
        Route("/admin/budgets", guarded(guard, budgets), methods=["GET"]),
        Route("/admin/reports", guarded(guard, reports), methods=["GET"]),
        Route("/admin/reports/runs", guarded(guard, runs), methods=["GET"]),
        Route("/admin/reports/what-if", guarded(guard, repriced), methods=["GET"]),
    ]


def _exact_json(obj: object) -> Response:
    """USD amounts are Decimals: written as exact JSON numbers (report.dumps)."""
    return Response(dumps(obj), media_type="application/json")
