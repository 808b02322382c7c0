"""What every dashboard page shares: the templates (Jinja2, autoescaped: every name from a
caller is escaped), the security headers, sign-in checks and form parsing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tallygate.dashboard.session import COOKIE, Session, Sessions
from tallygate.errors import InvalidRequest, TallygateError, driver_errors
from tallygate.gateway.request_body import read_capped
from tallygate.units import minute_text, usd_display

MAX_FORM_BYTES = 16 * 1024
# No inline script or style anywhere: an injected tag could not run even if one slipped
# past the escaping. Charts are inline SVG (attributes, not styles).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # no-referrer would make forms send `Origin: null`
    "cache-control": "no-store",
}

Page = Callable[[Request, Session], Awaitable[Response]]


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"



def _env() -> Environment:
    env = Environment(loader=PackageLoader("tallygate.dashboard", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["n"] = _number
    env.filters["usd"] = lambda v, places=6: usd_display(int(v), places)
    env.filters["path"] = lambda v: quote(str(v), safe="")
    env.filters["when"] = minute_text
    env.filters["limits_text"] = lambda limits: ", ".join(f"{k}={v}" for k, v in limits.items())
    return env


TEMPLATES = _env()


def render(name: str, context: Mapping[str, Any], status: int = 200) -> HTMLResponse:
    body = TEMPLATES.get_template(name).render(**context)
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def static_file(name: str) -> Response:
    kinds = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
    if name not in kinds:
        return Response("not found", status_code=404, media_type="text/plain",
                        headers=HEADERS)
    data = resources.files("tallygate.dashboard").joinpath("static", name).read_bytes()
    headers = {**HEADERS, "cache-control": "max-age=300"}
    return Response(data, media_type=kinds[name], headers=headers)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=HEADERS)


def client_of(request: Request) -> str:
    return request.client.host if request.client else "?"


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form under a size cap; repeated fields keep the last value."""
    body = await read_capped(request, MAX_FORM_BYTES, "Form")
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("The form is not valid UTF-8 urlencoded data.") from None
    return dict(pairs)


class Guard:
    """Wraps page handlers: signed in (else to the sign-in page), admin for changes, a
    valid CSRF token and a same-origin `Origin` on every POST."""

    def __init__(self, sessions: Sessions, base: Callable[[Session | None], dict[str, Any]]
                 ) -> None:
        self.sessions = sessions
        self.base = base

    def session(self, request: Request) -> Session | None:
        return self.sessions.read(request.cookies.get(COOKIE))

    def page(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not self.sessions.enabled:
                return self.message(None, "The dashboard is disabled",
                                    "Set TALLYGATE_ADMIN_KEY (or admin_key in the policy) "
                                    "to sign in with it.", 403)
            session = self.session(request)
            if session is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query
                                             else "")
                return see_other(f"/dashboard/login?next={quote(target, safe='')}")
            try:
                return await handler(request, session)
            except TallygateError as exc:
                return self.message(session, "That did not work", exc.message,
                                    exc.status if 400 <= exc.status < 500 else 503)
            except driver_errors() as exc:  # the ledger or a store is down: say so, in HTML
                return self.message(session, "Storage unavailable",
                                    f"{type(exc).__name__}: {str(exc)[:200]}", 503)

        return endpoint

    def action(self, handler: Callable[[Request, Session, dict[str, str]], Awaitable[Response]]
               ) -> Callable[[Request], Awaitable[Response]]:
        async def checked(request: Request, session: Session) -> Response:
            origin = request.headers.get("origin")
            if origin is not None and origin != _own_origin(request):
                return self.message(session, "Refused", "This form came from another site.",
                                    403)
            if not session.can_change:
                return self.message(session, "Read only",
                                    "You signed in with the viewer key: it can see "
                                    "everything and change nothing.", 403)
            form = await read_form(request)
            if not self.sessions.csrf_ok(session, form.get("csrf")):
                return self.message(session, "Refused",
                                    "The form's token is missing or stale: reload the page "
                                    "and try again.", 403)
            return await handler(request, session, form)

        return self.page(checked)

    def message(self, session: Session | None, title: str, text: str,
                status: int) -> Response:
        context = self.base(session) | {"title": title, "text": text}
        return render("message.html", context, status)


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
