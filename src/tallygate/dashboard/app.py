"""The `/dashboard` routes, mounted by the gateway next to `/admin` and served alone by
`tallygate dashboard --config FILE`. See docs/dashboard.md."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tallygate.config.names import PolicyNames
from tallygate.dashboard.actions import Actions
from tallygate.dashboard.pages import Pages
from tallygate.dashboard.session import COOKIE, Session, Sessions, safe_next
from tallygate.dashboard.sources import Sources
from tallygate.dashboard.web import Guard, client_of, read_form, render, see_other, static_file
from tallygate.errors import TallygateError

LOGIN_COOKIE = "tg_dashboard_login"
FAILED_SIGN_IN_DELAY = 0.5  # seconds; slows one client's guessing down


class Dashboard:
    """The routes and what they need; `close()` closes the sources it was given."""

    def __init__(self, sources: Sources, *, admin_key: str | None = None,
                 names: PolicyNames | None = None) -> None:
        policy = sources.policy
        if admin_key is None and policy.admin_key is not None:
            admin_key = policy.admin_key.get_secret_value()
        viewer = policy.dashboard.viewer_key
        self.sources = sources
        self.sessions = Sessions(admin_key, viewer.get_secret_value() if viewer else None,
                                 hours=policy.dashboard.session_hours, clock=sources.clock)
        self.guard = Guard(self.sessions, self.base)
        self.pages = Pages(sources, self.base)
        self.actions = Actions(sources, self.pages,
                               names or PolicyNames(policy, sources.catalog))

    def base(self, session: Session | None) -> dict[str, Any]:
        return {
            "session": session, "csrf": self.sessions.csrf(session) if session else "",
            "refresh": int(self.sources.policy.dashboard.refresh_seconds), "done": None,
            "error": None, "form": {},
        }

    # ------------------------------------------------------------------ sign-in / out

    async def login_page(self, request: Request) -> Response:
        return self._login(request, None, 200)

    def _login(self, request: Request, error: str | None, status: int) -> Response:
        nonce, token = self.sessions.login_token()
        context = self.base(None) | {"page": "login", "error": error, "token": token,
                                     "next": safe_next(request.query_params.get("next")),
                                     "enabled": self.sessions.enabled}
        response = render("login.html", context, status if self.sessions.enabled else 403)
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=1800, path="/dashboard",
                            httponly=True, samesite="strict", secure=_https(request))
        return response

    async def login(self, request: Request) -> Response:
        if not self.sessions.enabled:
            return self._login(request, None, 403)
        client = client_of(request)
        if self.sessions.throttled(client):
            return self._login(request, "Too many wrong keys from here: wait a minute.", 429)
        try:
            form = await read_form(request)
        except TallygateError as exc:
            return self._login(request, exc.message, 400)
        if not self.sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE),
                                            form.get("token")):
            return self._login(request, "The sign-in form expired: try again.", 403)
        role = self.sessions.role_of(form.get("key", ""))
        if role is None:
            self.sessions.failed(client)
            await asyncio.sleep(FAILED_SIGN_IN_DELAY)
            return self._login(request, "Wrong key.", 401)
        cookie, session = self.sessions.issue(role)
        response = see_other(safe_next(form.get("next")))
        response.set_cookie(COOKIE, cookie, max_age=int(session.expires - self.sources.clock()),
                            path="/dashboard", httponly=True, samesite="strict",
                            secure=_https(request))
        response.delete_cookie(LOGIN_COOKIE, path="/dashboard")
        return response

    async def logout(self, request: Request, session: Session,
                     form: dict[str, str]) -> Response:
        del session, form
        response = see_other("/dashboard/login")
        response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict",
                               secure=_https(request))
        return response

    async def logout_checked(self, request: Request) -> Response:
        """Sign-out needs the CSRF token but not the admin role (viewers sign out too)."""
        session = self.guard.session(request)
        if session is None:
            return see_other("/dashboard/login")
        form = await read_form(request)
        if not self.sessions.csrf_ok(session, form.get("csrf")):
            return self.guard.message(session, "Refused", "Stale form: reload and retry.", 403)
        return await self.logout(request, session, form)

    # ------------------------------------------------------------------ routes

    def routes(self) -> list[BaseRoute]:
        g, p, a = self.guard, self.pages, self.actions

        async def static(request: Request) -> Response:
            return static_file(request.path_params["name"])

        return [
            Route("/dashboard", g.page(p.overview), methods=["GET"]),
            Route("/dashboard/", g.page(p.overview), methods=["GET"]),
            Route("/dashboard/login", self.login_page, methods=["GET"]),
            Route("/dashboard/login", self.login, methods=["POST"]),
            Route("/dashboard/logout", self.logout_checked, methods=["POST"]),
            Route("/dashboard/static/{name}", static, methods=["GET"]),
            Route("/dashboard/budgets", g.page(p.budgets), methods=["GET"]),
            Route("/dashboard/runs", g.page(p.runs), methods=["GET"]),
            Route("/dashboard/runs/{run:path}", g.page(p.run), methods=["GET"]),
            Route("/dashboard/what-if", g.page(p.what_if), methods=["GET"]),
            Route("/dashboard/keys", g.page(p.keys), methods=["GET"]),
            Route("/dashboard/keys", g.action(a.create_key), methods=["POST"]),
            Route("/dashboard/keys/{key_id}", g.page(p.key), methods=["GET"]),
            Route("/dashboard/keys/{key_id}", g.action(a.update_key), methods=["POST"]),
            Route("/dashboard/keys/{key_id}/rotate", g.action(a.rotate_key),
                  methods=["POST"]),
            Route("/dashboard/keys/{key_id}/revoke", g.action(a.revoke_key),
                  methods=["POST"]),
            Route("/dashboard/flags", g.page(p.flags), methods=["GET"]),
            Route("/dashboard/flags/{feature:path}", g.action(a.set_flag), methods=["POST"]),
            Route("/dashboard/alerts", g.page(p.alerts), methods=["GET"]),
            Route("/dashboard/{rest:path}", self.not_found, methods=["GET", "POST"]),
        ]

    async def not_found(self, request: Request) -> Response:
        return self.guard.message(self.guard.session(request), "Not found",
                                  "No such dashboard page.", 404)

    async def close(self) -> None:
        await self.sources.close()


def _https(request: Request) -> bool:
    return request.url.scheme == "https"
