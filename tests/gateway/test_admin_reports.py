"""GET /admin/budgets, /admin/reports, /admin/reports/runs and /admin/reports/what-if,
and the CLI reading them with --url."""

from __future__ import annotations

import openai
import orjson
from typer.testing import CliRunner

from tallygate.cli.main import app as cli_app
from tests.support.gateway import ADMIN_KEY, RunningGateway, http

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "Hello"}]


def _spend(gw: RunningGateway, user: str, plan: str, calls: int,
           **headers: str) -> int:
    key = gw.create_key(user, plan)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                           default_headers={"X-Tallygate-Feature": "chat", **headers})
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


def test_admin_runs_and_what_if(gateway: RunningGateway) -> None:
    spent = _spend(gateway, "cy", "pro", 2, **{"X-Tallygate-Run": "T-9",
                                               "X-Tallygate-Step": "review"})
    status, _, raw = http("GET", gateway.url + "/admin/reports/runs?run=T-9", headers=ADMIN)
    assert status == 200
    [run] = orjson.loads(raw)["runs"]
    assert run["run"] == "T-9" and run["calls"] == 2 and run["total_tokens"] == spent
    assert [s["step"] for s in run["steps"]] == ["review"]
    status, _, raw = http("GET", gateway.url + "/admin/reports/what-if?step=review"
                          "&model=gpt-4o", headers=ADMIN)
    assert status == 200
    data = orjson.loads(raw)
    assert data["step"] == "review" and data["model"] == "gpt-4o"
    assert [g["calls"] for g in data["groups"]] == [2]
    assert data["what_if_nusd"] > data["current_nusd"] > 0  # gpt-4o costs more than mini
    status, _, raw = http("GET", gateway.url + "/admin/reports/what-if?feature=chat"
                          "&model=gpt-4o", headers=ADMIN)
    by_feature = orjson.loads(raw)
    assert status == 200 and by_feature["feature"] == "chat" and by_feature["step"] is None
    assert by_feature["current_nusd"] >= data["current_nusd"]
    for query, word in (("step=review", "model"), ("step=review&model=gpt-9000", "gpt-9000"),
                        ("step=review&feature=chat&model=gpt-4o", "feature")):
        status, _, raw = http("GET", gateway.url + f"/admin/reports/what-if?{query}",
                              headers=ADMIN)
        assert status == 400 and word in orjson.loads(raw)["error"]["message"]


def test_admin_read_routes_need_the_admin_key(gateway: RunningGateway) -> None:
    for path in ("/admin/budgets", "/admin/reports", "/admin/reports/runs",
                 "/admin/reports/what-if?step=a&model=gpt-4o"):
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


def test_cli_runs_and_what_if_url_mode(gateway: RunningGateway) -> None:
    spent = _spend(gateway, "di", "pro", 2, **{"X-Tallygate-Run": "T-7",
                                               "X-Tallygate-Step": "planning"})
    runner = CliRunner()
    remote = ["--url", gateway.url, "--admin-key", ADMIN_KEY]
    result = runner.invoke(cli_app, ["report", "runs", "--run", "T-7", "--json", *remote])
    assert result.exit_code == 0, result.output
    [run] = orjson.loads(result.output)["runs"]
    assert run["run"] == "T-7" and run["total_tokens"] == spent
    table = runner.invoke(cli_app, ["report", "runs", *remote])
    assert table.exit_code == 0, table.output
    assert "T-7" in table.output and "planning" in table.output
    result = runner.invoke(cli_app, ["what-if", "--step", "planning", "--model", "gpt-4o",
                                     "--json", *remote])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["groups"][0]["calls"] == 2
    table = runner.invoke(cli_app, ["what-if", "--step", "planning", "--model", "gpt-4o",
                                    *remote])
    assert table.exit_code == 0, table.output
    assert "what-if" in table.output and "gpt-4o-mini" in table.output
    bad = runner.invoke(cli_app, ["what-if", "--step", "planning", "--model", "gpt-9000",
                                  *remote])
    assert bad.exit_code == 2 and "gpt-9000" in bad.output
