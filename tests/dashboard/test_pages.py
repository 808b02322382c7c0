"""The dashboard over ASGI: who may see and change what, CSRF and origin checks, the
security headers, escaping of every caller-chosen name, and clear answers to bad input."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tallygate.dashboard.app import Dashboard
from tallygate.dashboard.session import COOKIE
from tests.dashboard.conftest import ADMIN, NASTY, VIEWER, Site, policy

PAGES = ["/dashboard", "/dashboard/budgets", "/dashboard/runs", "/dashboard/keys",
         "/dashboard/flags", "/dashboard/alerts", "/dashboard/what-if",
         "/dashboard?window=month&by=user", "/dashboard?window=hour&by=key"]


def test_signed_out_sees_nothing_but_the_sign_in_page(site: Site) -> None:
    for path in PAGES:
        r = site.client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")
    r = site.sign_in("wrong-key")
    assert r.status_code == 401 and "Wrong key" in r.text
    assert f"{COOKIE}=" not in r.headers.get("set-cookie", "").replace(f"{COOKIE}_login=", "")
    r = site.client.get("/dashboard", follow_redirects=True)
    assert "<nav>" not in r.text and "bob" not in r.text and "Sign in" in r.text


def test_admin_sees_every_page_with_names_escaped(site: Site) -> None:
    assert site.sign_in(ADMIN).status_code == 303
    for path in [*PAGES, "/dashboard/runs/" + NASTY]:
        r = site.client.get(path)
        assert r.status_code == 200, (path, r.text[-400:])
        assert NASTY not in r.text and "<img" not in r.text, path
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert r.headers["x-frame-options"] == "DENY"
        assert "'unsafe-inline'" not in r.headers["content-security-policy"]
        assert "<script>" not in r.text and " style=" not in r.text, path
    run = site.client.get("/dashboard/runs/" + NASTY).text
    assert "&lt;img src=x onerror=alert(1)&gt;[/]&#34;&#39;&amp;" in run


def test_session_cookie_flags(site: Site) -> None:
    cookie = site.sign_in(ADMIN).headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for flag in ("HttpOnly", "SameSite=strict", "Path=/dashboard"):
        assert flag.lower() in cookie.lower()


def test_forged_and_tampered_cookies_are_refused(site: Site) -> None:
    site.sign_in(VIEWER)
    good = site.client.cookies[COOKIE]
    payload, sig = good.split(".")
    import base64

    import orjson

    body = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
    body["r"] = "admin"  # a viewer making itself admin
    forged = base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()
    for value in (f"{forged}.{sig}", f"{payload}.{sig[:-2]}AA", "x.y", "", "a" * 600,
                  f"{payload}.{sig}.x"):
        site.client.cookies.set(COOKIE, value)
        r = site.client.get("/dashboard/keys", follow_redirects=False)
        assert r.status_code == 303, value


def test_viewer_changes_nothing(site: Site) -> None:
    site.sign_in(VIEWER)
    keys = site.client.get("/dashboard/keys").text
    assert "viewer (read only)" in keys and 'id="create-key"' not in keys
    csrf = site.csrf()
    r = site.client.post("/dashboard/keys", data={"csrf": csrf, "user": "v", "plan": "free"})
    assert r.status_code == 403 and "viewer key" in r.text
    r = site.client.post("/dashboard/flags/chat", data={"csrf": csrf, "on": "off"})
    assert r.status_code == 403
    assert site.run(site.sources.keys.list(include_revoked=True)) == []
    assert site.run(site.sources.store.flags()) == {}  # type: ignore[union-attr]
    assert site.client.post("/dashboard/logout", data={"csrf": csrf},
                            follow_redirects=False).status_code == 303


def test_posts_need_the_sessions_csrf_token_and_our_origin(site: Site) -> None:
    site.sign_in(ADMIN)
    csrf = site.csrf()
    for data, headers in (({"on": "off"}, {}), ({"on": "off", "csrf": "x" * 43}, {}),
                          ({"on": "off", "csrf": csrf}, {"origin": "https://evil.example"})):
        r = site.client.post("/dashboard/flags/chat", data=data, headers=headers)
        assert r.status_code == 403, data
    assert site.run(site.sources.store.flags()) == {}  # type: ignore[union-attr]
    r = site.client.post("/dashboard/flags/chat", data={"csrf": csrf, "on": "off"},
                         follow_redirects=False)
    assert r.status_code == 303
    assert site.run(site.sources.store.flags()) == {"chat": False}  # type: ignore[union-attr]
    # a token from another session is worth nothing
    site.client.cookies.clear()
    site.sign_in(ADMIN)
    r = site.client.post("/dashboard/flags/chat", data={"csrf": csrf, "on": "on"})
    assert r.status_code == 403


def test_sign_in_needs_the_forms_token_and_redirects_only_inside(site: Site) -> None:
    r = site.client.post("/dashboard/login", data={"key": ADMIN, "token": "forged"},
                         follow_redirects=False)
    assert r.status_code == 403
    assert "evil" not in site.client.get("/dashboard/login?next=https://evil.example/x").text

    def sign_in_to(target: str) -> str:
        page = site.client.get("/dashboard/login").text
        token = re.search(r'name="token" value="([^"]+)"', page)
        assert token is not None
        r = site.client.post("/dashboard/login", data={"key": ADMIN, "token": token[1],
                                                       "next": target},
                             follow_redirects=False)
        assert r.status_code == 303
        return str(r.headers["location"])

    for target in ("https://evil.example/", "//evil.example/x", "/dashboard\\..\\x",
                   "/\tdashboard", "javascript:alert(1)", "/dashboard//evil.example"):
        assert sign_in_to(target) in ("/dashboard", "/dashboard//evil.example"), target
    assert sign_in_to("/dashboard/runs?window=month") == "/dashboard/runs?window=month"


def test_wrong_keys_are_throttled_per_client(site: Site, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    import tallygate.dashboard.app as app_module

    monkeypatch.setattr(app_module, "FAILED_SIGN_IN_DELAY", 0)
    for _ in range(10):
        assert site.sign_in("guess").status_code == 401
    assert site.sign_in(ADMIN).status_code == 429  # even the right key, for this minute


def shown_secret(page: str) -> str:
    """The secret a created or rotated key's page shows (once)."""
    found = re.search(r'id="secret">([^<]+)<', page)
    assert found is not None, page[-500:]
    return found[1]


def test_keys_created_updated_and_revoked_through_forms(site: Site) -> None:
    site.sign_in(ADMIN)
    csrf = site.csrf()
    typo = site.client.post("/dashboard/keys", data={
        "csrf": csrf, "user": "u", "plan": "free", "features": "chta"})
    assert typo.status_code == 400 and "did you mean &#39;chat&#39;" in typo.text
    r = site.client.post("/dashboard/keys", data={
        "csrf": csrf, "user": NASTY, "plan": "free", "features": "chat, default",
        "limits": "tokens_per_day=10"})
    assert r.status_code == 201 and NASTY not in r.text
    secret = shown_secret(r.text)
    key = site.run(site.sources.keys.verify(secret))
    assert key is not None and key.user == NASTY and key.features == ("chat", "default")
    assert secret not in site.client.get("/dashboard/keys").text  # shown once
    bad = site.client.post(f"/dashboard/keys/{key.id}", data={
        "csrf": csrf, "plan": "gold", "limits": "tokens_per_day=5"})
    assert bad.status_code == 400 and "Unknown plan" in bad.text
    bad = site.client.post(f"/dashboard/keys/{key.id}", data={
        "csrf": csrf, "plan": "pro", "limits": "tokens_per_dya=5"})
    assert bad.status_code == 400 and "did you mean &#39;tokens_per_day&#39;" in bad.text
    ok = site.client.post(f"/dashboard/keys/{key.id}", data={
        "csrf": csrf, "plan": "pro", "features": "", "models": "gpt-4o*",
        "limits": "tokens_per_day=500"}, follow_redirects=False)
    assert ok.status_code == 303
    changed = site.run(site.sources.keys.get(key.id))
    assert (changed.plan, changed.features, changed.models, changed.limits) == (
        "pro", (), ("gpt-4o*",), {"tokens_per_day": 500})
    revoked = site.client.post(f"/dashboard/keys/{key.id}/revoke", data={"csrf": csrf},
                               follow_redirects=False)
    assert revoked.status_code == 303
    assert site.run(site.sources.keys.verify(secret)) is None
    missing = site.client.post("/dashboard/keys/key_nope/revoke", data={"csrf": csrf})
    assert missing.status_code == 400


def test_a_key_with_an_expiry_and_a_new_secret(site: Site) -> None:
    site.sign_in(ADMIN)
    csrf = site.csrf()
    bad = site.client.post("/dashboard/keys", data={
        "csrf": csrf, "user": "u", "plan": "free", "expires": "soonish"})
    assert bad.status_code == 400 and "expires: bad time" in bad.text
    made = site.client.post("/dashboard/keys", data={
        "csrf": csrf, "user": "exp", "plan": "free", "expires": "2099-01-31"})
    assert made.status_code == 201 and "expires 2099-01-31 00:00 UTC" in made.text
    secret = shown_secret(made.text)
    key = site.run(site.sources.keys.verify(secret))
    assert key is not None and key.expires_at == 4_073_500_800  # 2099-01-31 00:00 UTC
    listing = site.client.get("/dashboard/keys").text
    row = listing[listing.index(f'data-key="{key.id}"'):]
    assert '<td class="expires">2099-01-31 00:00</td>' in row[:row.index("</tr>")]
    rotated = site.client.post(f"/dashboard/keys/{key.id}/rotate", data={"csrf": csrf})
    assert rotated.status_code == 200 and "New secret" in rotated.text
    assert "The old secret is refused from now on." in rotated.text
    new = shown_secret(rotated.text)
    assert new != secret
    assert site.run(site.sources.keys.verify(secret)) is None
    assert site.run(site.sources.keys.verify(new)).id == key.id
    assert site.client.post("/dashboard/keys/key_nope/rotate",
                            data={"csrf": csrf}).status_code == 400
    assert site.client.post(f"/dashboard/keys/{key.id}/rotate",
                            data={"csrf": "forged"}).status_code == 403
    assert site.run(site.sources.keys.verify(new)) is not None  # nothing rotated


@pytest.mark.parametrize(("path", "text"), [
    ("/dashboard?window=yesterday", "unknown window"),
    ("/dashboard?by=usr", "did you mean &#39;user&#39;"),
    ("/dashboard/budgets?user=" + "u" * 300, "printable characters"),
    ("/dashboard/what-if?step=review&model=gpt-4q", "gpt-4"),
    ("/dashboard/budgets?key=key_nope", "no key with id"),
])
def test_bad_parameters_get_a_clear_page(site: Site, path: str, text: str) -> None:
    site.sign_in(ADMIN)
    r = site.client.get(path)
    assert 400 <= r.status_code < 500 and text in r.text, r.text[-500:]
    assert "Traceback" not in r.text


def test_big_forms_are_refused(site: Site) -> None:
    site.sign_in(ADMIN)
    r = site.client.post("/dashboard/keys", data={"csrf": site.csrf(), "user": "u" * 20000})
    assert r.status_code == 413


def test_disabled_without_an_admin_key(site: Site, tmp_path: Path) -> None:
    import asyncio

    from tallygate.dashboard.sources import open_sources

    loop = asyncio.new_event_loop()
    sources = loop.run_until_complete(open_sources(policy(tmp_path / "x", admin_key=None)))
    dash = Dashboard(sources)
    with TestClient(Starlette(routes=dash.routes())) as client:
        r = client.get("/dashboard")
        assert r.status_code == 403 and "disabled" in r.text
        assert client.get("/dashboard/login").status_code == 403
        r = client.post("/dashboard/login", data={"key": VIEWER, "token": "x"})
        assert r.status_code == 403
    loop.run_until_complete(dash.close())
    loop.close()


def test_overview_figures_come_from_the_ledger(site: Site) -> None:
    site.sign_in(ADMIN)
    page = site.client.get("/dashboard?window=hour").text
    assert re.search(r'id="calls">3<', page)
    assert re.search(r'id="refused">1<', page)
    assert "budget_exceeded" in page and "<rect" in page
    budgets = site.client.get("/dashboard/budgets").text
    assert 'data-limit="feature:chat:tokens:day"' in budgets


def test_unknown_dashboard_pages_are_an_html_404(site: Site) -> None:
    r = site.client.get("/dashboard/nope")
    assert r.status_code == 404 and "No such dashboard page" in r.text
    assert r.headers["content-type"].startswith("text/html")
    assert site.client.get("/dashboard/static/../../pyproject.toml").status_code == 404
    assert site.client.get("/dashboard/static/x.js").status_code == 404


def test_a_broken_ledger_is_an_html_503(site: Site) -> None:
    site.sign_in(ADMIN)
    # A table goes away under the dashboard: another client of the ledger file drops it.
    with closing(sqlite3.connect(site.ledger_path, isolation_level=None)) as db:
        db.execute("DROP TABLE rollup_hour")
    r = site.client.get("/dashboard?window=day")
    assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
    assert "Traceback" not in r.text


def test_tallygate_dashboard_serves_the_policys_storage(tmp_path: Path) -> None:
    """`tallygate dashboard --config FILE`: no gateway, the policy's ledger and stores."""
    import asyncio
    import re as re_

    from tallygate.cli.dashboard import build_app
    from tallygate.ledger import open_ledger
    from tests.dashboard.conftest import rows

    config = tmp_path / "p.yaml"
    config.write_text(
        f"storage: {{state: 'sqlite:///{tmp_path}/s.db', ledger: 'sqlite:///{tmp_path}/l.db'}}\n"
        f"admin_key: {ADMIN}\n")

    async def fill() -> None:
        store = await open_ledger(f"sqlite:///{tmp_path}/l.db")
        import time as t

        await store.write_batch(rows(t.time()))
        await store.close()

    asyncio.run(fill())
    with TestClient(build_app(config)) as client:  # type: ignore[arg-type]
        assert client.get("/", follow_redirects=False).headers["location"] == "/dashboard"
        page = client.get("/dashboard/login").text
        token = re_.search(r'name="token" value="([^"]+)"', page)
        assert token is not None
        client.post("/dashboard/login", data={"key": ADMIN, "token": token[1]})
        overview = client.get("/dashboard?window=hour")
        assert overview.status_code == 200 and re_.search(r'id="calls">3<', overview.text)


def test_a_run_id_of_two_owners_is_two_runs_on_the_runs_pages(site: Site) -> None:
    """r1 (user NASTY) and r2 (bob) send the same run id: two runs, each its own calls."""
    from urllib.parse import quote

    from markupsafe import escape

    site.sign_in(VIEWER)
    runs = site.client.get("/dashboard/runs").text
    costly = runs.split('id="costly"')[1].split("</table>")[0]
    owners = re.findall(r'<td class="text">([^<]*)</td><td>(\d+)</td>', costly)
    assert set(owners) == {("user.bob", "1"), (str(escape(f"user.{NASTY}")), "1")}
    page = site.client.get("/dashboard/runs/" + quote(NASTY, safe="")).text
    assert "2 owners sent this run id" in page
    assert page.count("1 calls, 60 tokens") == 1 and page.count("1 calls, 120 tokens") == 1
    bob = site.client.get("/dashboard/runs/" + quote(NASTY, safe="") + "?owner=user.bob")
    assert bob.status_code == 200 and "1 calls, 60 tokens" in bob.text
    assert "120 tokens" not in bob.text and "owners sent" not in bob.text
    nobody = site.client.get("/dashboard/runs/" + quote(NASTY, safe="") + "?owner=user.eve")
    assert nobody.status_code == 404 and "No calls recorded for this run." in nobody.text
