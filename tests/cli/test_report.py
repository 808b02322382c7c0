"""`tallygate report`, `report runs` and `what-if` end to end on a temporary SQLite ledger
(the fixed ledger of test_report.py, whose numbers are computed by hand there)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from tallygate.cli.report import register
from tests.support.cli import cli_with
from tests.support.ledgers import sqlite_ledger
from tests.support.rows import ROWS, SHARED


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    return sqlite_ledger(tmp_path / "ledger.db", ROWS)


@pytest.fixture
def cli() -> typer.Typer:
    return cli_with(register)


def invoke(app: typer.Typer, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_report_by_user_json(cli, ledger_url) -> None:
    res = invoke(cli, "report", "--by", "user", "--json", "--ledger", ledger_url)
    assert res.exit_code == 0, res.output
    data = orjson.loads(res.stdout)
    assert data["by"] == "user"
    assert [(r["key"], r["calls"], r["cost_nusd"]) for r in data["rows"]] == [
        ("dave", 5, 205000), (None, 5, 68600), ("alice", 2, 5000), ("bob", 2, 2500),
        ("carol", 1, 360)]
    assert data["rows"][0]["cost_usd"] == 0.000205
    assert data["total"]["total_tokens"] == 32950  # 27800 in + 5150 out


def test_report_table_and_since(cli, ledger_url) -> None:
    res = invoke(cli, "report", "--ledger", ledger_url)
    assert res.exit_code == 0, res.output
    for text in ("Usage by feature", "code", "chat", "summarize", "$0.000274", "total"):
        assert text in res.stdout
    res = invoke(cli, "report", "--by", "day", "--since", "2026-11-02", "--json",
                 "--ledger", ledger_url)
    assert [(r["key"], r["calls"]) for r in orjson.loads(res.stdout)["rows"]] == [
        ("2026-11-02", 10)]


def test_report_runs(cli, ledger_url) -> None:
    res = invoke(cli, "report", "runs", "--json", "--ledger", ledger_url)
    assert res.exit_code == 0, res.output
    data = orjson.loads(res.stdout)
    assert [(r["run"], r["extra_loops"]) for r in data["runs"]] == [("R1", 1), ("R2", 2)]
    assert data["costliest_steps"][0]["step"] == "planning"
    res = invoke(cli, "report", "runs", "--run", "R2", "--ledger", ledger_url)
    assert res.exit_code == 0, res.output
    assert "run R2" in res.stdout and "run R1" not in res.stdout
    assert "Runs that looped most" in res.stdout and "review" in res.stdout


def test_a_run_id_of_two_owners_is_two_runs_in_tables_csv_and_html(cli, tmp_path) -> None:
    url = sqlite_ledger(tmp_path / "shared.db", SHARED)
    res = invoke(cli, "report", "runs", "--run", "shared-id", "--ledger", url)
    assert res.exit_code == 0, res.output
    for title in ("run shared-id of user.alice: 40 tokens",
                  "run shared-id of user.bob: 305 tokens",
                  "run shared-id of key.k_svc: 4,005 tokens"):
        assert title in res.stdout
    res = invoke(cli, "report", "runs", "--format", "csv", "--ledger", url)
    lines = res.stdout.splitlines()
    assert lines[0].startswith("run,owner,step,") and len(lines) == 4
    assert sorted(line.split(",")[1] for line in lines[1:]) == [
        "key.k_svc", "user.alice", "user.bob"]
    res = invoke(cli, "report", "--by", "run", "--format", "csv", "--ledger", url)
    lines = res.stdout.splitlines()
    assert lines[0].startswith("key,owner,calls,")
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["shared-id", "key.k_svc", "1"], ["shared-id", "user.bob", "1"],
        ["shared-id", "user.alice", "2"]]
    res = invoke(cli, "report", "--by", "run", "--ledger", url, "--wide")
    assert "owner" in res.stdout and "user.alice" in res.stdout
    html = tmp_path / "report.html"
    res = invoke(cli, "report", "--html", str(html), "--ledger", url)
    assert res.exit_code == 0, res.output
    page = html.read_text()
    for owner in ("user.alice", "user.bob", "key.k_svc"):
        assert f"<td>shared-id</td><td class='text'>{owner}</td>" in page


def test_what_if_with_a_configured_model(cli, ledger_url, tmp_path) -> None:
    policy = tmp_path / "tallygate.yaml"
    policy.write_text(
        f"storage:\n  ledger: {ledger_url}\n"
        "models:\n  cheap-review: {provider: local, context_window: 8192, "
        "encoding: o200k_base, input_per_mtok: 0.001, output_per_mtok: 0.005}\n"
    )
    res = invoke(cli, "what-if", "--step", "review", "--model", "cheap-review", "--json",
                 "--config", str(policy))
    assert res.exit_code == 0, res.output
    data = orjson.loads(res.stdout)
    # $0.001/M in (1 nano-USD a token, cached at the same rate), $0.005/M out, per call:
    # r8 4000,500 → 6500; r9 4500,300 → 6000; r12 → 1500; r13 → 1600; r14 → 1700
    assert (data["current_nusd"], data["what_if_nusd"], data["saving_nusd"]) == (
        51900, 17300, 34600)
    res = invoke(cli, "what-if", "--step", "review", "--model", "cheap-review",
                 "--config", str(policy))
    assert "saving $0.034600" not in res.stdout  # nano-dollars, not milli
    assert "saving $0.000035" in res.stdout and "(66.7%)" in res.stdout
    assert "kept as recorded" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "--by", "colour"], "cannot report by 'colour'"),
        (["report", "--since", "last tuesday"], "bad time 'last tuesday'"),
        (["what-if", "--step", "review", "--model", "no-such-model-xyz"], "Unknown model"),
    ],
)
def test_bad_input_is_one_line(cli, ledger_url, args, message) -> None:
    res = invoke(cli, *args, "--ledger", ledger_url)
    assert res.exit_code == 2
    assert res.stderr.startswith("tallygate: error: ") and message in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output


def test_missing_ledger_and_bad_scheme(cli, tmp_path) -> None:
    res = invoke(cli, "report", "--ledger", f"sqlite:///{tmp_path / 'none.db'}")
    assert res.exit_code == 2 and "no ledger at" in res.stderr
    assert not (tmp_path / "none.db").exists()  # reading never creates a ledger
    res = invoke(cli, "report", "runs", "--ledger", "mysql://x@y/z")
    assert res.exit_code == 2 and "unknown ledger URL scheme 'mysql'" in res.stderr


def test_real_entry_point(ledger_url) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tallygate", "report", "--by", "step", "--json",
         "--ledger", ledger_url],
        check=False, capture_output=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = orjson.loads(proc.stdout)["rows"]
    assert [(r["key"], r["cost_nusd"]) for r in rows][:2] == [("planning", 172500),
                                                             ("review", 51900)]
