"""`GET /admin/flags`, `PUT /admin/flags/{feature}` (body `{"on": true|false}`) and
`DELETE /admin/flags/{feature}` (back to the policy's value).

A flag set here is written to the shared state store; every gateway on that store
(FlagView polls `flags_version()` every 0.5 s) applies it within a second."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tallygate.config.names import PolicyNames
from tallygate.errors import InvalidRequest
from tallygate.gateway.admin.guard import AdminGuard, guarded, json_response, read_json_object
from tallygate.gateway.throttle import AuthThrottle
from tallygate.reports.flags import check_feature_name, flag_list
from tallygate.state.base import StateStore

MAX_BODY = 4096


def flag_routes(
    store: StateStore, admin_key: str | None, *, static: Mapping[str, bool] | None = None,
    names: PolicyNames | None = None, throttle: AuthThrottle | None = None,
) -> list[Route]:
    """`names`: the policy's names; a flag for no configured feature is then a 400."""
    guard = AdminGuard(admin_key, throttle)
    defaults = dict(static or {})

    def feature_of(request: Request) -> str:
        name = check_feature_name(request.path_params["feature"])
        return names.check_flag(name) if names is not None else name

    async def list_flags(request: Request) -> Response:
        del request
        return json_response(200, {"object": "list", "data": await flag_list(store, defaults)})

    async def set_flag(request: Request) -> Response:
        name = feature_of(request)
        data = await read_json_object(request, MAX_BODY)
        on = data.get("on")
        if not isinstance(on, bool) or set(data) != {"on"}:
            raise InvalidRequest('The body must be {"on": true} or {"on": false}.', param="on")
        await store.set_flag(name, on)
        return json_response(200, {"feature": name, "on": on, "source": "runtime"})

    async def clear_flag(request: Request) -> Response:
        name = feature_of(request)
        was_set = await store.clear_flag(name)
        return json_response(200, {"feature": name, "on": defaults.get(name, True),
                                   "source": "policy", "cleared": was_set})

    return [
        Route("/admin/flags", guarded(guard, list_flags), methods=["GET"]),
        Route("/admin/flags/{feature:path}", guarded(guard, set_flag), methods=["PUT"]),
        Route("/admin/flags/{feature:path}", guarded(guard, clear_flag), methods=["DELETE"]),
    ]
