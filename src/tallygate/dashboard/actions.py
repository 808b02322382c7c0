"""The dashboard's changes (admin sessions only, CSRF-checked by `Guard.action`): create,
update, rotate and revoke virtual keys, switch feature flags. Every value goes through the same
checks as the admin API (`gateway/admin/keys.py`), so a form cannot store what
`POST /admin/keys` would refuse."""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tallygate.config.names import PolicyNames
from tallygate.dashboard.pages import Pages
from tallygate.dashboard.session import Session
from tallygate.dashboard.sources import Sources
from tallygate.dashboard.web import render, see_other
from tallygate.errors import InvalidRequest, TallygateError
from tallygate.keys.model import parse_limit_items
from tallygate.keys.requests import check_update
from tallygate.reports.flags import check_feature_name
from tallygate.units import parse_when

_SPLIT = re.compile(r"[,\s]+")


def names(text: str | None) -> list[str]:
    """`chat, summarize` or `chat summarize` → ["chat", "summarize"]."""
    return [n for n in _SPLIT.split(text or "") if n]


def limits(text: str | None) -> dict[str, Any]:
    """`tokens_per_day=5000, cost_usd_per_day=2.5` → checked limits."""
    return parse_limit_items(names(text))


def expiry(text: str) -> int:
    """The create form's `expires` (30d, 12h, a date or an ISO time) → unix seconds."""
    try:
        return int(parse_when(text.strip(), time.time(), ahead=True))
    except InvalidRequest as exc:
        raise InvalidRequest(f"expires: {exc.message}", param="expires_at") from None


def key_fields(form: dict[str, str], *, creating: bool) -> dict[str, Any]:
    """The form as the admin API's update body (all fields; `user` too when creating)."""
    data: dict[str, Any] = {
        "plan": form.get("plan", ""), "name": form.get("name") or None,
        "features": names(form.get("features")), "models": names(form.get("models")),
        "limits": limits(form.get("limits")),
    }
    if creating:
        data["user"] = form.get("user", "")
    return data


class Actions:
    def __init__(self, src: Sources, pages: Pages, names: PolicyNames) -> None:
        self.src = src
        self.pages = pages
        self.names = names  # plans, features, models: checked as at every other door

    async def create_key(self, request: Request, session: Session,
                         form: dict[str, str]) -> Response:
        try:
            data = key_fields(form, creating=True)
            user = data.pop("user")
            if (form.get("expires") or "").strip():
                data["expires_at"] = expiry(form["expires"])
            checked = check_update(data, self.names)
            if not user.strip():
                raise InvalidRequest("'user' must be a non-empty string.", param="user")
            self.names.check_key(plan=checked["plan"], features=checked["features"],
                                 models=checked["models"])
            key, secret = await self.src.keys.create(user, **checked)
        except TallygateError as exc:
            context = await self.pages.keys_context(request, session)
            return render("keys.html", context | {"error": exc.message, "form": form}, 400)
        context = self.pages.base(session) | {"page": "keys", "key": key, "secret": secret}
        return render("key_created.html", context, 201)

    async def update_key(self, request: Request, session: Session,
                         form: dict[str, str]) -> Response:
        key_id = request.path_params["key_id"][:64]
        try:
            key = await self.src.keys.update(key_id, **check_update(
                key_fields(form, creating=False), self.names))
        except TallygateError as exc:
            current = await self.src.keys.get(key_id)
            if current is None:
                raise
            context = self.pages.base(session) | {
                "page": "keys", "key": current, "error": exc.message, "form": form,
                "plans": sorted(self.src.policy.plans)}
            return render("key_edit.html", context, 400)
        if key is None:
            raise InvalidRequest("No such key.", param="id")
        return see_other("/dashboard/keys?done=updated")

    async def rotate_key(self, request: Request, session: Session,
                         form: dict[str, str]) -> Response:
        del form
        rotated = await self.src.keys.rotate(request.path_params["key_id"][:64])
        if rotated is None:
            raise InvalidRequest("No such key.", param="id")
        key, secret = rotated
        context = self.pages.base(session) | {"page": "keys", "key": key, "secret": secret,
                                              "heading": "New secret"}
        return render("key_created.html", context, 200)

    async def revoke_key(self, request: Request, session: Session,
                         form: dict[str, str]) -> Response:
        del session, form
        if not await self.src.keys.revoke(request.path_params["key_id"][:64]):
            raise InvalidRequest("No such key.", param="id")
        return see_other("/dashboard/keys?done=revoked")

    async def set_flag(self, request: Request, session: Session,
                       form: dict[str, str]) -> Response:
        del session
        if self.src.store is None:
            raise InvalidRequest(self.src.store_problem or "no state store")
        name = self.names.check_flag(check_feature_name(request.path_params["feature"]))
        if form.get("on") not in ("on", "off"):
            raise InvalidRequest("A flag is switched on or off.", param="on")
        await self.src.store.set_flag(name, form["on"] == "on")
        return see_other("/dashboard/flags?done=flag")
