"""GET /admin/budgets and /admin/reports, and the CLI reading them with --url."""

from __future__ import annotations

import openai
import orjson
from typer.testing import CliRunner

from tallygate.cli.main import app as cli_app
from tests.support.gateway import ADMIN_KEY, RunningGateway, http

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "Hello"}]


def _spend(gw: RunningGateway, user: str, plan: str, calls: int) -> int:
    key = gw.create_key(user, plan)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                           default_headers={"X-Tallygate-Feature": "chat"})
    return sum(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
               .usage.total_tokens for _ in range(calls))


def test_admin_budgets_and_reports(gateway: RunningGateway) -> None:
    spent = _spend(gateway, "ada", "free", 3)
    status, _, raw = http("GET", gateway.url + "/admin/budgets?user=ada", headers=ADMIN)
    assert status == 200
    limits = {item["key"]: item for item in orjson.loads(raw)["limits"]}
    assert limits["user:ada:tokens:day"]["used"] == spent
    assert limits["user:ada:tokens:day"]["remaining"] == 2000 - spent
    status, _, raw = http("GET", gateway.url + "/admin/reports?by=user", headers=ADMIN)
    assert status == 200
    rows = {r["key"]: r for r in orjson.loads(raw)["rows"]}
    assert rows["ada"]["calls"] == 3 and rows["ada"]["total_tokens"] == spent


def test_admin_read_routes_need_the_admin_key(gateway: RunningGateway) -> None:
    for path in ("/admin/budgets", "/admin/reports"):
        status, _, raw = http("GET", gateway.url + path)
        assert status == 401
        assert orjson.loads(raw)["error"]["code"] == "invalid_api_key"
    status, _, raw = http("GET", gateway.url + "/admin/reports?by=colour", headers=ADMIN)
    assert status == 400 and "colour" in orjson.loads(raw)["error"]["message"]


def test_cli_url_mode(gateway: RunningGateway) -> None:
    spent = _spend(gateway, "bo", "pro", 2)
    runner = CliRunner()
    result = runner.invoke(cli_app, ["budgets", "--url", gateway.url, "--admin-key", ADMIN_KEY,
                                     "--user", "bo", "--json"])
    assert result.exit_code == 0, result.output
    limits = {i["key"]: i for i in orjson.loads(result.output)["limits"]}
    assert limits["user:bo:tokens:day"]["used"] == spent
    table = runner.invoke(cli_app, ["report", "--by", "user", "--url", gateway.url,
                                    "--admin-key", ADMIN_KEY])
    assert table.exit_code == 0, table.output
    assert "bo" in table.output and f"{spent:,}" in table.output
    wrong = runner.invoke(cli_app, ["report", "--url", gateway.url, "--admin-key", "nope"])
    assert wrong.exit_code == 2 and "401" in wrong.output
