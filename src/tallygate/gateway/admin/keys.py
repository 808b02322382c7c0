"""The admin HTTP API for virtual keys, mounted by the gateway app under `/admin/keys`.

`Authorization: Bearer <admin key>` (TALLYGATE_ADMIN_KEY), compared in constant time.
No admin key configured → 403 (admin disabled); a wrong or missing one → 401. Errors are
OpenAI-format JSON; every malformed body is a 400, never a 500. `PATCH /admin/keys/{id}`
changes a key's plan, name, allow-lists or limits (only the fields given).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tallygate.errors import InvalidRequest
from tallygate.gateway.admin.guard import (
    DEFAULT_MAX_BODY,
    AdminGuard,
    guarded,
    json_response,
    openai_error,
    read_json_object,
)
from tallygate.keys.base import KeyStore
from tallygate.keys.model import VirtualKey, check_limits, check_names, check_text

LimitsValidator = Callable[[Mapping[str, Any]], object]
CREATE_FIELDS = frozenset({"user", "plan", "name", "features", "models", "limits"})
UPDATE_FIELDS = frozenset({"plan", "name", "features", "models", "limits"})


def not_found(key_id: str) -> Response:
    return openai_error(404, f"No key with id {key_id[:64]!r}.",
                        type_="invalid_request_error", code="not_found", param="id")


def _check_fields(data: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        name = unknown[0][:64]
        hint = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
        guess = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise InvalidRequest(f"Unknown field {name!r}{guess}.", param=name)


def check_plan(value: object, plans: Collection[str] | None) -> str:
    plan = str(check_text(value, "plan"))
    if plans is not None and plan not in plans:
        known = ", ".join(sorted(plans)) or "none"
        hint = difflib.get_close_matches(plan[:64], sorted(plans), n=1, cutoff=0.6)
        guess = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise InvalidRequest(f"Unknown plan {plan[:64]!r}{guess} (known plans: {known}).",
                             param="plan")
    return plan


def _check_limits(value: object, validate_limits: LimitsValidator | None) -> dict[str, Any]:
    limits = check_limits(value)
    if validate_limits is not None and limits:
        validate_limits(limits)
    return limits


def check_update(data: Mapping[str, Any], plans: Collection[str] | None,
                 validate_limits: LimitsValidator | None = None) -> dict[str, Any]:
    """The fields of a key update, checked like a creation's (only those given)."""
    _check_fields(data, UPDATE_FIELDS)
    if not data:
        raise InvalidRequest("Nothing to change: give plan, name, features, models or limits.")
    out: dict[str, Any] = {}
    if "plan" in data:
        out["plan"] = check_plan(data["plan"], plans)
    if "name" in data:
        out["name"] = check_text(data["name"], "name", optional=True)
    for field in ("features", "models"):
        if field in data:
            out[field] = list(check_names(data[field] if data[field] is not None else [],
                                          field))
    if "limits" in data:
        out["limits"] = _check_limits(data["limits"] or {}, validate_limits)
    return out


def _check_create(data: Mapping[str, Any], plans: Collection[str] | None,
                  validate_limits: LimitsValidator | None) -> dict[str, Any]:
    _check_fields(data, CREATE_FIELDS)
    plan = check_plan(data.get("plan"), plans)
    limits = _check_limits(data.get("limits"), validate_limits)
    return {
        "user": check_text(data.get("user"), "user"),
        "plan": plan,
        "name": check_text(data.get("name"), "name", optional=True),
        "features": check_names(data.get("features"), "features"),
        "models": check_names(data.get("models"), "models"),
        "limits": limits,
    }


def _public(key: VirtualKey) -> dict[str, Any]:
    return {"object": "tallygate.key", **key.to_public_dict()}


def admin_routes(
    keystore: KeyStore,
    admin_key: str | None,
    *,
    plans: Collection[str] | None = None,
    validate_limits: LimitsValidator | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> list[Route]:
    """Routes for `/admin/keys`. `plans`: the known plan names (others → 400);
    `validate_limits`: the policy's own check of a limits mapping (raise TallygateError)."""
    guard = AdminGuard(admin_key)

    async def create(request: Request) -> Response:
        fields = _check_create(await read_json_object(request, max_body), plans,
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
        fields = check_update(await read_json_object(request, max_body), plans,
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
