"""The admin HTTP API for virtual keys, mounted by the gateway app under `/admin/keys`.

`Authorization: Bearer <admin key>` (TALLYGATE_ADMIN_KEY), compared in constant time.
No admin key configured → 403 (admin disabled); a wrong or missing one → 401. Errors are
OpenAI-format JSON; every malformed body is a 400, never a 500. `PATCH /admin/keys/{id}`
changes a key's plan, name, allow-lists or limits (only the fields given).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tallygate.config.names import PolicyNames, did_you_mean
from tallygate.errors import InvalidRequest
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
from tallygate.keys.model import VirtualKey, check_limits, check_names, check_text

LimitsValidator = Callable[[Mapping[str, Any]], object]
CREATE_FIELDS = frozenset({"user", "plan", "name", "features", "models", "limits"})
UPDATE_FIELDS = frozenset({"plan", "name", "features", "models", "limits"})


def not_found(key_id: str) -> Response:
    return openai_error(404, f"No key with id {key_id[:64]!r}.",
                        type_="invalid_request_error", code="not_found", param="id")


def _check_create(data: Mapping[str, Any], names: PolicyNames | None,
                  validate_limits: LimitsValidator | None) -> dict[str, Any]:
    unknown = sorted(set(data) - CREATE_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown field {unknown[0][:64]!r}.", param=unknown[0][:64])
    limits = check_limits(data.get("limits"))
    if validate_limits is not None and limits:
        validate_limits(limits)
    fields = {
        "user": check_text(data.get("user"), "user"),
        "plan": check_text(data.get("plan"), "plan"),
        "name": check_text(data.get("name"), "name", optional=True),
        "features": check_names(data.get("features"), "features"),
        "models": check_names(data.get("models"), "models"),
        "limits": limits,
    }
    if names is not None:  # the same check as `tallygate keys create` (config/names.py)
        names.check_key(plan=fields["plan"], features=fields["features"],
                        models=fields["models"])
    return fields


def check_update(data: Mapping[str, Any], names: PolicyNames | None,
                 validate_limits: LimitsValidator | None = None) -> dict[str, Any]:
    """The fields of a key update, checked like a creation's (only those given)."""
    unknown = sorted(set(data) - UPDATE_FIELDS)
    if unknown:
        name = unknown[0][:64]
        raise InvalidRequest(f"Unknown field {name!r}{did_you_mean(name, UPDATE_FIELDS)}.",
                             param=name)
    if not data:
        raise InvalidRequest("Nothing to change: give plan, name, features, models or limits.")
    out: dict[str, Any] = {}
    if "plan" in data:
        out["plan"] = check_text(data["plan"], "plan")
    if "name" in data:
        out["name"] = check_text(data["name"], "name", optional=True)
    for field in ("features", "models"):
        if field in data:
            out[field] = list(check_names(data[field] or [], field))
    if "limits" in data:
        out["limits"] = check_limits(data["limits"] or {})
        if validate_limits is not None and out["limits"]:
            validate_limits(out["limits"])
    if names is not None:  # the names a creation is checked against (config/names.py)
        problems = [("plan", out["plan"], names.plan_problem)] if "plan" in out else []
        problems += [("features", f, names.feature_pattern_problem)
                     for f in out.get("features", [])]
        problems += [("models", m, names.model_pattern_problem) for m in out.get("models", [])]
        for param, value, check in problems:
            problem = check(value)
            if problem is not None:
                raise InvalidRequest(problem[0].upper() + problem[1:] + ".", param=param)
    return out


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
        fields = _check_create(await read_json_object(request, max_body), names,
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

    return [
        Route("/admin/keys", guarded(guard, create), methods=["POST"]),
        Route("/admin/keys/{key_id}", guarded(guard, update), methods=["PATCH"]),
        Route("/admin/keys", guarded(guard, list_keys), methods=["GET"]),
        Route("/admin/keys/{key_id}", guarded(guard, get_key), methods=["GET"]),
        Route("/admin/keys/{key_id}", guarded(guard, revoke), methods=["DELETE"]),
    ]
