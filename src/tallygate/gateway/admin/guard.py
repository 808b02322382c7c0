"""What every admin route shares: the admin-key check (constant time; no admin key
configured → 403, a wrong or missing one → 401), JSON bodies read under a cap, and
errors as OpenAI-format JSON."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tallygate.errors import (
    InvalidApiKey,
    InvalidRequest,
    PermissionDenied,
    TallygateError,
)
from tallygate.gateway.auth import bearer_token
from tallygate.gateway.request_body import read_capped
from tallygate.gateway.throttle import AuthThrottle

Handler = Callable[[Request], Awaitable[Response]]


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


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


class AdminGuard:
    """Checks the admin key; hashing both sides first hides the key's length too.
    With a throttle, wrong keys count against the client's address (gateway/throttle.py)."""

    def __init__(self, admin_key: str | None, throttle: AuthThrottle | None = None) -> None:
        self._digest = _digest(admin_key) if admin_key else None
        self._throttle = throttle

    def check(self, request: Request) -> None:
        if self._digest is None:
            raise PermissionDenied(
                "The admin API is disabled: set TALLYGATE_ADMIN_KEY on the gateway to enable it."
            )
        address = request.client.host if request.client and self._throttle else None
        if address is not None and self._throttle is not None:
            self._throttle.check(address)
        token = bearer_token(request.headers.get("authorization"))
        if token is None or not hmac.compare_digest(_digest(token), self._digest):
            if address is not None and self._throttle is not None:
                self._throttle.failed(address)
            raise InvalidApiKey("Invalid or missing admin key (Authorization: Bearer <admin key>).")


async def read_json_object(request: Request, cap: int) -> dict[str, Any]:
    """The body as a JSON object, RequestTooLarge past `cap` bytes, else InvalidRequest."""
    body = await read_capped(request, cap)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def guarded(guard: AdminGuard, handler: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        try:
            guard.check(request)
            return await handler(request)
        except TallygateError as exc:
            return error_response(exc)

    return endpoint
