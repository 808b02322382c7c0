"""Read-only admin routes over a running gateway's own storage: `GET /admin/budgets`
(what `tallygate budgets --url` shows) and `GET /admin/reports` (`tallygate report
--url`). Same admin key and error format as /admin/keys."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tallygate.budgets import Query, budget_rows, iso, row_json
from tallygate.gateway.admin import AdminGuard, _guarded
from tallygate.report import dumps, parse_when, usage_json, usage_report

if TYPE_CHECKING:
    from tallygate.runtime import Runtime


def report_routes(rt: Runtime, admin_key: str | None) -> list[Route]:
    guard = AdminGuard(admin_key)

    async def budgets(request: Request) -> Response:
        p = request.query_params
        q = Query(p.get("user"), p.get("key"), p.get("feature"), p.get("plan"),
                  p.get("model"), p.get("run"))
        now = time.time()
        keys = await rt.keys.list(include_revoked=True)
        rows = await budget_rows(rt.policy, q, rt.store, keys, now)
        return _exact_json({"now": iso(now), "limits": [row_json(r, now) for r in rows]})

    async def reports(request: Request) -> Response:
        p = request.query_params
        by = p.get("by", "feature")  # usage_report refuses unknown dimensions
        now = time.time()
        since = parse_when(p["since"], now) if p.get("since") else None
        until = parse_when(p["until"], now) if p.get("until") else None
        await rt.writer.flush()  # rows still in the writer's batch count too
        report = await usage_report(rt.ledger, by, since=since, until=until)
        return _exact_json(usage_json(report))

    return [
        Route("/admin/budgets", _guarded(guard, budgets), methods=["GET"]),
        Route("/admin/reports", _guarded(guard, reports), methods=["GET"]),
    ]


def _exact_json(obj: object) -> Response:
    """USD amounts are Decimals: written as exact JSON numbers (report.dumps)."""
    return Response(dumps(obj), media_type="application/json")
