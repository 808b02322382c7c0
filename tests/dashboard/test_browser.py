"""The dashboard in headless Chromium (Playwright) against a real gateway in front of the
simulator: sign-in, charts with the data of real calls, budgets, runs with hostile names,
keys created and revoked in the UI, the kill switch, alerts, the viewer and a wrong key.
Each test saves its screenshots (tests/support/browser.py says where)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.support.browser import chromium_context, screenshot_dir
from tests.support.gateway import (
    ADMIN_KEY,
    RunningGateway,
    running_gateway,
    running_sim,
    sim_policy,
)
from tests.support.webhooks import Receiver

VIEWER = "viewer-key-browser"
RUN = '<img src=x onerror="document.title=1">[/]<b>loop</b>'
FEATURES = {"chat": {"max_output": 60, "model": "gpt-4o-mini"},
            "coding": {"max_output": 80, "model": "gpt-4o-mini"}, "default": {"max_output": 50}}
PLANS = {"free": {"tokens_per_day": 5000}, "pro": {"tokens_per_day": 1_000_000}}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_dir(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dash")
    with running_sim() as (sim, sim_loop):
        receiver = sim_loop.call(Receiver().start())
        policy = sim_policy(
            sim.url, str(tmp), features=FEATURES, plans=PLANS,
            tiers={"small": "gpt-4o-mini", "large": "gpt-4o"},
            dashboard={"viewer_key": VIEWER, "refresh_seconds": 1},
            alerts=[{"metric": "cost_usd", "window": "hour", "above": "0.000001",
                     "notify": receiver.url}])
        with running_gateway(policy) as gw, sync_playwright() as pw:
            yield {"gw": gw, "pw": pw, "receiver": receiver}
        sim_loop.call(receiver.close())


def call(gw: RunningGateway, secret: str, feature: str = "chat", run: str | None = None,
         step: str | None = None, attempt: int | None = None) -> Any:
    headers = {"X-Tallygate-Feature": feature}
    if run:
        headers |= {"X-Tallygate-Run": run, "X-Tallygate-Step": step or "execution",
                    "X-Tallygate-Attempt": str(attempt or 1)}
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=secret, max_retries=0)
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there " * 5}],
        extra_headers=headers)


def sign_in(page: Page, gw: RunningGateway, key: str, path: str = "/dashboard") -> None:
    page.goto(f"{gw.url}{path}")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")


@contextmanager
def signed_in(world: dict[str, Any], key: str, path: str = "/dashboard") -> Iterator[Page]:
    """A page in a fresh browser, signed in with `key` and sent on to `path`."""
    with chromium_context(world["pw"]) as ctx:
        page = ctx.new_page()
        sign_in(page, world["gw"], key, path)
        yield page


@pytest.fixture(scope="module")
def traffic(world: dict[str, Any]) -> dict[str, Any]:
    """Real calls through the gateway: two users, a looping run with a hostile name."""
    gw = world["gw"]
    alice = gw.create_key("alice", "free")
    bob = gw.create_key("bob", "pro")
    for _ in range(3):
        call(gw, alice, "chat")
    for attempt in (1, 2, 3):
        call(gw, bob, "coding", run=RUN, step="review", attempt=attempt)
    call(gw, bob, "coding", run=RUN, step="planning")
    rows = gw.rows()
    return {"alice": alice, "bob": bob, "rows": rows}


def test_wrong_key_sees_nothing(world: dict[str, Any], shots: Path) -> None:
    gw = world["gw"]
    with signed_in(world, "not-the-admin-key") as page:
        expect(page.locator(".error")).to_have_text("Wrong key.")
        assert page.locator("nav").count() == 0
        page.screenshot(path=shots / "dashboard-sign-in.png")
        page.goto(f"{gw.url}/dashboard/keys")
        assert "/dashboard/login" in page.url and page.locator("table").count() == 0


def test_overview_charts_show_the_real_calls(world: dict[str, Any], traffic: dict[str, Any],
                                             shots: Path) -> None:
    gw, rows = world["gw"], traffic["rows"]
    with signed_in(world, ADMIN_KEY) as page:
        expect(page.locator("h1")).to_contain_text("Overview")
        expect(page.locator("#calls")).to_have_text(f"{len(rows):,}")
        tokens = sum(r.input_tokens + r.output_tokens for r in rows)
        expect(page.locator("#tokens")).to_have_text(f"{tokens:,}")
        assert page.locator("#tokens-chart svg.chart rect").count() >= 2
        assert page.locator("#cost-chart svg.chart rect").count() >= 2
        legend = page.locator("#tokens-chart .legend").inner_text()
        assert "chat" in legend and "coding" in legend
        page.screenshot(path=shots / "dashboard-overview.png", full_page=True)
        # It refreshes by itself: a new call shows up without a reload.
        call(gw, traffic["bob"], "chat")
        expect(page.locator("#calls")).to_have_text(f"{len(rows) + 1:,}", timeout=10_000)
        page.click("button[value=user]")
        expect(page.locator("#tokens-chart .legend")).to_contain_text("alice")


def test_budget_rows_show_used_and_remaining(world: dict[str, Any], traffic: dict[str, Any],
                                             shots: Path) -> None:
    gw = world["gw"]
    used = sum(r.input_tokens + r.output_tokens for r in gw.rows()
               if r.user == "alice" and r.outcome.value != "rejected")
    with signed_in(world, ADMIN_KEY, "/dashboard/budgets") as page:
        row = page.locator('tr[data-limit="user:alice:tokens:day"]')
        expect(row.locator(".used")).to_have_text(f"{used:,}")
        expect(row.locator(".remaining")).to_have_text(f"{5000 - used:,}")
        page.screenshot(path=shots / "dashboard-budgets.png", full_page=True)


def test_run_names_are_shown_literally(world: dict[str, Any], traffic: dict[str, Any],
                                       shots: Path) -> None:
    gw = world["gw"]
    with chromium_context(world["pw"]) as ctx:
        page = ctx.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        sign_in(page, gw, ADMIN_KEY, "/dashboard/runs")
        link = page.get_by_role("link", name=RUN).first
        expect(link).to_have_text(RUN)
        page.screenshot(path=shots / "dashboard-runs.png", full_page=True)
        link.click()
        expect(page.locator("#run-name")).to_have_text(RUN)
        assert page.locator("img").count() == 0 and page.locator("main b", has_text="loop"
                                                                   ).count() == 0
        review = page.locator(".steps tr", has_text="review")
        expect(review.locator("td").nth(1)).to_have_text("3")  # three attempts
        page.screenshot(path=shots / "dashboard-run.png", full_page=True)
        review.get_by_role("link", name="large").click()
        expect(page.locator("h1")).to_have_text("What if")
        assert re.search(r"\$\d", page.locator(".cards").inner_text())
        assert dialogs == [] and page.title() != "1"
        page.screenshot(path=shots / "dashboard-what-if.png", full_page=True)


def test_key_created_in_the_ui_works_until_revoked(world: dict[str, Any],
                                                   traffic: dict[str, Any],
                                                   shots: Path) -> None:
    gw = world["gw"]
    with signed_in(world, ADMIN_KEY, "/dashboard/keys") as page:
        form = page.locator("#create-key")
        form.locator("input[name=user]").fill("carol")
        form.locator("select[name=plan]").select_option("pro")
        form.locator("input[name=features]").fill("chat")
        form.locator("button[type=submit]").click()
        secret = page.locator("#secret").inner_text()
        key_id = page.locator("#key-id").inner_text()
        page.screenshot(path=shots / "dashboard-key-created.png")
        assert call(gw, secret, "chat").choices
        with pytest.raises(openai.PermissionDeniedError):
            call(gw, secret, "coding")  # not on its allow-list
        page.goto(f"{gw.url}/dashboard/keys")
        row = page.locator(f'tr[data-key="{key_id}"]')
        expect(row.locator(".spend")).not_to_have_text("$0.000000")
        page.screenshot(path=shots / "dashboard-keys.png", full_page=True)
        row.get_by_role("button", name="revoke").click()
        expect(page.locator(".done")).to_have_text("Key revoked.")
        with pytest.raises(openai.AuthenticationError):
            call(gw, secret, "chat")


def test_kill_switch_in_the_ui(world: dict[str, Any], traffic: dict[str, Any],
                               shots: Path) -> None:
    gw = world["gw"]
    with signed_in(world, ADMIN_KEY, "/dashboard/flags") as page:
        row = page.locator('tr[data-flag="chat"]')
        row.get_by_role("button", name="switch off").click()
        expect(page.locator('tr[data-flag="chat"] td.off')).to_have_text("off")
        page.screenshot(path=shots / "dashboard-flags.png")
        deadline = time.monotonic() + 3
        while True:  # flags are polled: effective within a second
            try:
                call(gw, traffic["bob"], "chat")
            except openai.PermissionDeniedError as exc:
                assert exc.body["code"] == "feature_disabled"  # type: ignore[index]
                break
            assert time.monotonic() < deadline, "the flag never took effect"
            time.sleep(0.1)
        page.locator('tr[data-flag="chat"]').get_by_role("button", name="switch on").click()
        expect(page.locator('tr[data-flag="chat"] td.on')).to_have_text("on")


def test_alerts_page_shows_the_payload(world: dict[str, Any], traffic: dict[str, Any],
                                       shots: Path) -> None:
    gw = world["gw"]
    rt = gw.gateway.runtime
    assert rt is not None and gw.gateway.observe is not None
    gw.loop.call(rt.writer.flush())
    alerts = gw.gateway.observe.alerts
    assert alerts is not None
    gw.loop.call(alerts.evaluate(time.time()))
    with signed_in(world, ADMIN_KEY, "/dashboard/alerts") as page:
        alert = page.locator("details.alert").first
        expect(alert.locator("summary")).to_contain_text("cost_usd")
        alert.locator("summary").click()
        expect(alert.locator("pre")).to_contain_text('"threshold_usd": "0.000001"')
        page.screenshot(path=shots / "dashboard-alerts.png", full_page=True)


def test_viewer_sees_everything_and_changes_nothing(world: dict[str, Any],
                                                    traffic: dict[str, Any]) -> None:
    gw = world["gw"]
    rt = gw.gateway.runtime
    assert rt is not None
    before = gw.loop.call(rt.keys.list(include_revoked=True))
    with signed_in(world, VIEWER, "/dashboard/keys") as page:
        expect(page.locator(".who")).to_have_text("viewer (read only)")
        assert page.locator("#keys tr").count() > 1
        assert page.locator("#create-key").count() == 0
        assert page.get_by_role("button", name="revoke").count() == 0
        page.goto(f"{gw.url}/dashboard/flags")
        assert page.get_by_role("button", name="switch off").count() == 0
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        key_id = before[0].id
        for path, form in ((f"/dashboard/keys/{key_id}/revoke", {"csrf": csrf}),
                           ("/dashboard/flags/chat", {"csrf": csrf, "on": "off"}),
                           ("/dashboard/keys", {"csrf": csrf, "user": "v", "plan": "pro"})):
            answer = page.request.post(f"{gw.url}{path}", form=form)
            assert answer.status == 403, path
    assert gw.loop.call(rt.keys.list(include_revoked=True)) == before
    assert call(gw, traffic["bob"], "chat").choices  # the kill switch stayed on
