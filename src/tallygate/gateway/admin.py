"""The admin HTTP API for virtual keys, mounted by the gateway app under `/admin/keys`.

`Authorization: Bearer <admin key>` (TALLYGATE_ADMIN_KEY), compared in constant time.
No admin key configured → 403 (admin disabled); a wrong or missing one → 401. Errors are
OpenAI-format JSON; every malformed body is a 400, never a 500.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tallygate.errors import (
    InvalidApiKey,
    InvalidRequest,
    PermissionDenied,
    RequestTooLarge,
    TallygateError,
)
from tallygate.gateway.auth import bearer_token
from tallygate.keys.model import VirtualKey, check_limits, check_names, check_text
from tallygate.keys.store import KeyStore

Handler = Callable[[Request], Awaitable[Response]]
LimitsValidator = Callable[[Mapping[str, Any]], object]
CREATE_FIELDS = frozenset({"user", "plan", "name", "features", "models", "limits"})
DEFAULT_MAX_BODY = 64 * 1024


def json_response(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def openai_error(status: int, message: str, *, type_: str, code: str,
                 param: str | None = None) -> Response:
    return json_response(
        status, {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def error_response(exc: TallygateError) -> Response:
    return openai_error(exc.status, exc.message, type_=exc.openai_type, code=exc.code,
                        param=exc.param)


def not_found(key_id: str) -> Response:
    return openai_error(404, f"No key with id {key_id[:64]!r}.",
                        type_="invalid_request_error", code="not_found", param="id")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


class AdminGuard:
    """Checks the admin key; hashing both sides first hides the key's length too."""

    def __init__(self, admin_key: str | None) -> None:
        self._digest = _digest(admin_key) if admin_key else None

    def check(self, request: Request) -> None:
        if self._digest is None:
            raise PermissionDenied(
                "The admin API is disabled: set TALLYGATE_ADMIN_KEY on the gateway to enable it."
            )
        token = bearer_token(request.headers.get("authorization"))
        if token is None or not hmac.compare_digest(_digest(token), self._digest):
            raise InvalidApiKey("Invalid or missing admin key (Authorization: Bearer <admin key>).")


async def read_json_object(request: Request, cap: int) -> dict[str, Any]:
    """The body as a JSON object, RequestTooLarge past `cap` bytes, else InvalidRequest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise RequestTooLarge(f"Request body exceeds {cap} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise RequestTooLarge(f"Request body exceeds {cap} bytes.")
    try:
        data = orjson.loads(bytes(body))
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def _check_create(data: Mapping[str, Any], plans: Collection[str] | None,
                  validate_limits: LimitsValidator | None) -> dict[str, Any]:
    unknown = sorted(set(data) - CREATE_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown field {unknown[0][:64]!r}.", param=unknown[0][:64])
    plan = check_text(data.get("plan"), "plan")
    if plans is not None and plan not in plans:
        known = ", ".join(sorted(plans)) or "none"
        raise InvalidRequest(f"Unknown plan {plan!r} (known plans: {known}).", param="plan")
    limits = check_limits(data.get("limits"))
    if validate_limits is not None and limits:
        validate_limits(limits)
    return {
        "user": check_text(data.get("user"), "user"),
        "plan": plan,
        "name": check_text(data.get("name"), "name", optional=True),
        "features": check_names(data.get("features"), "features"),
        "models": check_names(data.get("models"), "models"),
        "limits": limits,
    }


def _guarded(guard: AdminGuard, handler: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        try:
            guard.check(request)
            return await handler(request)
        except TallygateError as exc:
            return error_response(exc)

    return endpoint


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

    return [
        Route("/admin/keys", _guarded(guard, create), methods=["POST"]),
        Route("/admin/keys", _guarded(guard, list_keys), methods=["GET"]),
        Route("/admin/keys/{key_id}", _guarded(guard, get_key), methods=["GET"]),
        Route("/admin/keys/{key_id}", _guarded(guard, revoke), methods=["DELETE"]),
    ]
