"""The API's edges in the API's own error JSON: an unknown path (404), a wrong method
(405, with `Allow`) and a body that is not JSON (415) on the `/v1/*` routes — the
Anthropic shape on `/v1/messages*`, OpenAI's elsewhere — never a text/plain page."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from tallygate.gateway.http import Scope, Send, send_json
from tallygate.providers import anthropic as anthropic_wire
from tallygate.providers import openai as openai_wire

_CODES = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}
_ANTHROPIC_TYPES = {404: "not_found_error"}


def error_body(status: int, message: str, path: str) -> bytes:
    code = _CODES.get(status, "invalid_request")
    if path.startswith("/v1/messages"):
        return anthropic_wire.error_body(
            code, message, type=_ANTHROPIC_TYPES.get(status, "invalid_request_error"),
            request_id="")
    return openai_wire.error_body(code, message, type="invalid_request_error")


def json_body(scope: Scope) -> bool:
    """False when the request declares a body type other than JSON (absent is fine:
    SDKs always send it, and a bare curl gets parsed as JSON or a clear 400)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or kind.endswith(b"+json")
    return True


async def refuse(scope: Scope, send: Send) -> None:
    """405 or 415 for a POST-only API route."""
    path = scope["path"]
    if scope["method"] != "POST":
        body = error_body(405, f"{scope['method'][:16]} is not allowed on {path}: use POST.",
                          path)
        await send_json(send, 405, body, [(b"allow", b"POST")])
        return
    body = error_body(415, "The request body must be JSON (Content-Type: application/json).",
                      path)
    await send_json(send, 415, body, [])


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        message = f"No route {path[:200]}."
    elif exc.status_code == 405:
        message = f"{request.method[:16]} is not allowed on {path[:200]}."
    else:
        message = str(exc.detail)
    headers = dict(exc.headers or {})
    return Response(error_body(exc.status_code, message, path), status_code=exc.status_code,
                    media_type="application/json", headers=headers)


HANDLERS = {404: _http_error, 405: _http_error}
