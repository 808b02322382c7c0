"""Dashboard sign-in: the admin key (every right) or the viewer key (read only) is
exchanged for a signed session cookie; forms carry a CSRF token bound to the session.

- Keys are compared as SHA-256 digests with `hmac.compare_digest`, against both keys
  every time, so neither the timing nor the order says which one (or how long) it was.
- The cookie is `payload.signature`: the payload (role, session id, expiry, and for the
  viewer a keyed fingerprint of the viewer key) in base64url, signed with HMAC-SHA256
  under a secret derived from the admin key. Changing the admin key ends every session;
  changing the viewer key ends the viewer's. Nothing is kept server-side, so every
  replica with the same keys accepts the same cookie. It is sent HttpOnly, SameSite=
  Strict, Path=/dashboard, and Secure over https.
- The CSRF token is HMAC(secret, "csrf:" + session id): a page can only be posted with a
  token that was rendered into it for that session.
- Failed sign-ins are counted per client address: past `MAX_FAILURES` a minute the
  address is refused until the minute ends (a weak admin key cannot be guessed online).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import orjson

Role = Literal["admin", "viewer"]
COOKIE = "tg_dashboard"
MAX_FAILURES = 10
MAX_TRACKED = 10_000
MAX_KEY_LENGTH = 1024


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    role: Role
    sid: str
    expires: float

    @property
    def can_change(self) -> bool:
        return self.role == "admin"


class Sessions:
    """Signs in, issues and reads session cookies, makes and checks CSRF tokens."""

    def __init__(self, admin_key: str | None, viewer_key: str | None = None, *,
                 hours: float = 12.0, clock: Callable[[], float] = time.time) -> None:
        self.enabled = bool(admin_key)
        self._admin = _digest(admin_key) if admin_key else None
        self._viewer = _digest(viewer_key) if viewer_key else None
        seed = self._admin or secrets.token_bytes(32)
        self._secret = hmac.new(seed, b"tallygate dashboard session v1", "sha256").digest()
        self._viewer_fp = (_b64(self._mac(b"viewer:" + self._viewer)[:12])
                           if self._viewer else None)
        self._ttl = hours * 3600
        self._clock = clock
        self._failures: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._secret, data, "sha256").digest()

    # ------------------------------------------------------------------ sign-in

    def role_of(self, presented: str) -> Role | None:
        """The role a key signs in as, or None. Constant time in the key's content."""
        if not self.enabled or len(presented) > MAX_KEY_LENGTH:
            return None
        d = _digest(presented)
        admin = hmac.compare_digest(d, self._admin or b"")
        viewer = hmac.compare_digest(d, self._viewer or b"") if self._viewer else False
        if admin:
            return "admin"
        return "viewer" if viewer else None

    def throttled(self, client: str) -> bool:
        minute = int(self._clock() // 60)
        count, at = self._failures.get(client, (0, minute))
        return at == minute and count >= MAX_FAILURES

    def failed(self, client: str) -> None:
        minute = int(self._clock() // 60)
        count, at = self._failures.pop(client, (0, minute))
        self._failures[client] = (count + 1 if at == minute else 1, minute)
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    # ------------------------------------------------------------------ cookies

    def issue(self, role: Role) -> tuple[str, Session]:
        session = Session(role, secrets.token_urlsafe(18), float(int(self._clock() + self._ttl)))
        body = {"r": role, "s": session.sid, "e": int(session.expires)}
        if role == "viewer":
            body["v"] = self._viewer_fp or ""
        payload = _b64(orjson.dumps(body))
        return f"{payload}.{_b64(self._mac(payload.encode()))}", session

    def _body(self, cookie: str | None) -> dict[str, object] | None:
        """The payload of a cookie whose signature is ours, else None."""
        if not self.enabled or not cookie or len(cookie) > 512 or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        try:
            if not hmac.compare_digest(_unb64(signature), self._mac(payload.encode())):
                return None
            body = orjson.loads(_unb64(payload))
        except (ValueError, orjson.JSONDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie proves, or None (forged, expired, or from an old key)."""
        body = self._body(cookie) or {}
        role, sid, expires = body.get("r"), body.get("s"), body.get("e")
        fresh = isinstance(expires, int) and expires > self._clock()
        if role not in ("admin", "viewer") or not isinstance(sid, str) or not fresh:
            return None
        if role == "viewer" and (self._viewer_fp is None or not hmac.compare_digest(
                str(body.get("v", "")), self._viewer_fp)):
            return None
        return Session(role, sid, float(expires))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ CSRF

    def csrf(self, session: Session) -> str:
        return _b64(self._mac(b"csrf:" + session.sid.encode()))

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf(session))

    def login_token(self) -> tuple[str, str]:
        """(cookie value, form value) for the sign-in form: double-submit, so a page on
        another site cannot sign a browser in with the attacker's key."""
        nonce = secrets.token_urlsafe(18)
        return nonce, _b64(self._mac(b"login:" + nonce.encode()))

    def login_token_ok(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token or len(nonce) > 64:
            return False
        return hmac.compare_digest(str(token), _b64(self._mac(b"login:" + nonce.encode())))


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path only (no open redirect)."""
    if not target or not target.startswith("/dashboard") or "\\" in target:
        return "/dashboard"
    if target.startswith("//") or any(ord(c) < 33 for c in target) or len(target) > 2000:
        return "/dashboard"
    return target
