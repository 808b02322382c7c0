"""`POST /admin/reload`: re-read and swap in the policy file (gateway/reload.py), on this
gateway and, through the shared state store, on every replica. A file that does not load
is a 400 naming the problem; the running policy stays."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tallygate.config import Policy
from tallygate.gateway.admin.guard import AdminGuard, guarded, json_response
from tallygate.gateway.throttle import AuthThrottle


def reload_routes(reload: Callable[[], Awaitable[Policy]], admin_key: str | None,
                  throttle: AuthThrottle | None = None) -> list[Route]:
    guard = AdminGuard(admin_key, throttle)

    async def post(_: Request) -> Response:
        policy = await reload()  # a ConfigError becomes its 400 in `guarded`
        return json_response(200, {"reloaded": True, "features": sorted(policy.features),
                                   "plans": sorted(policy.plans)})

    return [Route("/admin/reload", guarded(guard, post), methods=["POST"])]
