"""The admin HTTP API for virtual keys, mounted by the gateway app under `/admin/keys`.

`Authorization: Bearer <admin key>` (TALLYGATE_ADMIN_KEY), compared in constant time.
No admin key configured → 403 (admin disabled); a wrong or missing one → 401. Errors are
OpenAI-format JSON; every malformed body is a 400, never a 500. `PATCH /admin/keys/{id}`
changes a key's plan, name, allow-lists, limits or expiry (only the fields given);
`POST /admin/keys/{id}/rotate` gives it a new secret (shown once) and refuses the old one.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tallygate.config.names import PolicyNames
from tallygate.gateway.admin.guard import (
    DEFAULT_MAX_BODY,
    AdminGuard,
    guarded,
    json_response,
    openai_error,
    read_json_object,
)
from tallygate.gateway.throttle import AuthThrottle
from tallygate.keys.base import KeyStore
from tallygate.keys.model import VirtualKey
from tallygate.keys.requests import LimitsValidator, check_create, check_update


def not_found(key_id: str) -> Response:
    return openai_error(404, f"No key with id {key_id[:64]!r}.",
                        type_="invalid_request_error", code="not_found", param="id")


def _public(key: VirtualKey) -> dict[str, Any]:
    return {"object": "tallygate.key", **key.to_public_dict()}


def admin_routes(
    keystore: KeyStore,
    admin_key: str | None,
    *,
    names: PolicyNames | None = None,
    validate_limits: LimitsValidator | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    throttle: AuthThrottle | None = None,
) -> list[Route]:
    """Routes for `/admin/keys`. `names`: the policy's names (unknown plans, features
    and models → 400 with "did you mean");
    `validate_limits`: the policy's own check of a limits mapping (raise TallygateError)."""
    guard = AdminGuard(admin_key, throttle)

    async def create(request: Request) -> Response:
        fields = check_create(await read_json_object(request, max_body), names,
                               validate_limits)
        key, secret = await keystore.create(**fields)
        return json_response(201, {**_public(key), "key": secret})

    async def list_keys(request: Request) -> Response:
        flag = request.query_params.get("all", "").lower()
        keys = await keystore.list(include_revoked=flag in {"1", "true", "yes", "on"})
        return json_response(200, {"object": "list", "data": [_public(k) for k in keys]})

    async def get_key(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        key = await keystore.get(key_id)
        return json_response(200, _public(key)) if key else not_found(key_id)

    async def revoke(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        if not await keystore.revoke(key_id):
            return not_found(key_id)
        key = await keystore.get(key_id)
        body = _public(key) if key else {"id": key_id}
        return json_response(200, {**body, "revoked": True})

    async def update(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        fields = check_update(await read_json_object(request, max_body), names,
                              validate_limits)
        key = await keystore.update(key_id, **fields)
        return json_response(200, _public(key)) if key else not_found(key_id)

    async def rotate(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        rotated = await keystore.rotate(key_id)
        if rotated is None:
            return not_found(key_id)
        key, secret = rotated
        return json_response(200, {**_public(key), "key": secret})

    return [
        Route("/admin/keys", guarded(guard, create), methods=["POST"]),
        Route("/admin/keys/{key_id}/rotate", guarded(guard, rotate), methods=["POST"]),
        Route("/admin/keys/{key_id}", guarded(guard, update), methods=["PATCH"]),
        Route("/admin/keys", guarded(guard, list_keys), methods=["GET"]),
        Route("/admin/keys/{key_id}", guarded(guard, get_key), methods=["GET"]),
        Route("/admin/keys/{key_id}", guarded(guard, revoke), methods=["DELETE"]),
    ]
