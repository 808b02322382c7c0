"""Terminal output a person can read: at COLUMNS=80 every table fits by choosing columns
(snapshots), numbers are never cut, `--wide` shows every column, markup in names is
printed as it is, CSV parses back to the figures of --json, and `--format` is checked."""

from __future__ import annotations

import csv
import io
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from tallygate.cli import budgets as budgets_cli
from tallygate.cli import keys as keys_cli
from tallygate.cli.report import register
from tallygate.types import CallRecord, Outcome
from tests.support.cli import cli_with
from tests.support.ledgers import sqlite_ledger
from tests.support.rows import DAY2, ROWS

SNAPSHOTS = Path(__file__).parent / "snapshots"
NARROW = {"COLUMNS": "80", "LINES": "50"}
MARKUP = "[/]"  # would end a rich style that was never opened


def _snapshot(name: str, text: str) -> None:
    """Compare with tests/unit/snapshots/NAME (TALLYGATE_UPDATE_SNAPSHOTS=1 rewrites it)."""
    path = SNAPSHOTS / name
    if os.environ.get("TALLYGATE_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed"


def _fits(text: str, width: int = 80) -> None:
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert not too_wide, too_wide


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    extra = [
        CallRecord("m1", DAY2 + 900, Outcome.OK, 200, feature="code", run=MARKUP,
                   step="[bold]review", step_attempt=1, user="[red]eve", key_id="key_abc",
                   model_used="sonnet", input_tokens=123_456_789, output_tokens=98_765_432,
                   cost_nusd=987_654_321_987, latency_ms=12),
        CallRecord("m2", DAY2 + 960, Outcome.OK, 200, feature="code", run=MARKUP,
                   step="[bold]review", step_attempt=2, user="[red]eve", key_id="key_abc",
                   model_used="sonnet", input_tokens=10, output_tokens=5, cost_nusd=50),
    ]

    return sqlite_ledger(tmp_path / "ledger.db", [*ROWS, *extra])


@pytest.fixture
def cli() -> typer.Typer:
    return cli_with(register)


def run(app: typer.Typer, *args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(app, list(args), env=env or NARROW, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_report_fits_80_columns(cli: typer.Typer, ledger_url: str) -> None:
    out = run(cli, "report", "--by", "user", "--ledger", ledger_url).stdout
    _fits(out)
    _snapshot("report-by-user-80.txt", out)
    assert "222,222,236" in out and "$987.654322" in out  # whole, with its cost
    assert "[red]eve" in out  # markup printed literally


def test_wide_shows_every_column_uncut(cli: typer.Typer, ledger_url: str) -> None:
    out = run(cli, "report", "--by", "user", "--wide", "--ledger", ledger_url).stdout
    for column in ("reasoning", "p50 ms", "cache hits", "saved", "errors", "cached"):
        assert column in out
    assert "…" not in out and "123,456,799" in out and "98,765,437" in out  # uncut


def test_runs_and_what_if_fit_and_print_markup(cli: typer.Typer, ledger_url: str) -> None:
    runs = run(cli, "report", "runs", "--ledger", ledger_url).stdout
    _fits(runs)
    _snapshot("report-runs-80.txt", runs)
    assert f"run {MARKUP} of user.[red]eve:" in runs and "[bold]review" in runs
    what = run(cli, "what-if", "--step", "review", "--model", "gpt-4o", "--ledger",
               ledger_url).stdout
    _fits(what)
    assert "extra cost $" in what and "% more)" in what and "saving" not in what
    cheaper = run(cli, "what-if", "--feature", "code", "--model", "gpt-4o-mini", "--ledger",
                  ledger_url, "--json").stdout
    data = orjson.loads(cheaper)
    assert data["feature"] == "code" and data["step"] is None and data["saving_nusd"] > 0


def test_report_by_key_and_plan(cli: typer.Typer, ledger_url: str) -> None:
    data = orjson.loads(run(cli, "report", "--by", "key", "--json", "--ledger",
                            ledger_url).stdout)
    assert {r["key"]: r["calls"] for r in data["rows"]} == {"key_abc": 2, None: 15}
    plans = orjson.loads(run(cli, "report", "--by", "plan", "--format", "json", "--ledger",
                             ledger_url).stdout)
    assert plans["by"] == "plan" and plans["total"]["calls"] == 17


@pytest.mark.parametrize("args", [["report", "--by", "user"], ["report", "--by", "run"],
                                  ["report", "runs"],
                                  ["what-if", "--step", "review", "--model", "gpt-4o"]])
def test_csv_parses_back_to_the_json_figures(cli: typer.Typer, ledger_url: str,
                                             args: list[str]) -> None:
    as_json = orjson.loads(run(cli, *args, "--json", "--ledger", ledger_url).stdout)
    as_csv = list(csv.DictReader(io.StringIO(
        run(cli, *args, "--format", "csv", "--ledger", ledger_url).stdout)))
    if args[0] == "what-if":
        expected = as_json["groups"]
    elif args[1:2] == ["runs"]:
        expected = [{"run": r["run"], "owner": r["owner"], **s}
                    for r in as_json["runs"] for s in r["steps"]]
    else:
        expected = as_json["rows"]
    assert len(as_csv) == len(expected) > 0
    for got, want in zip(as_csv, expected, strict=True):
        for name, text in got.items():
            value = want[name]
            if value is None:
                assert text == "", name
            elif isinstance(value, str):
                assert text == value, name
            else:  # integers and exact USD decimals
                assert Decimal(text) == Decimal(str(value)), name


def test_format_is_checked(cli: typer.Typer, ledger_url: str) -> None:
    bad = CliRunner().invoke(cli, ["report", "--format", "cvs", "--ledger", ledger_url])
    assert bad.exit_code == 2 and "did you mean 'csv'" in bad.stderr
    both = CliRunner().invoke(cli, ["report", "--json", "--format", "csv", "--ledger",
                                    ledger_url])
    assert both.exit_code == 2 and "disagree" in both.stderr
    by = CliRunner().invoke(cli, ["report", "--by", "usr", "--ledger", ledger_url])
    assert by.exit_code == 2 and "did you mean 'user'" in by.stderr


def test_report_html(cli: typer.Typer, ledger_url: str, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    run(cli, "report", "--html", str(out), "--ledger", ledger_url, "--since", "2026-11-02")
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert "[red]eve" in html and "R1" in html and "alice" not in html  # the window only
    assert "Tokens by step over time" in html and "<rect" in html


# ---------------------------------------------------------------- budgets and keys

LIMITS = [
    {"key": "model:gpt-4o-mini:cost:day", "scope": "model", "id": "gpt-4o-mini",
     "metric": "cost", "window": "day", "rolling": False, "limit": 1_000_000_000, "used": 900,
     "reserved": 400, "remaining": 999_998_700, "reset_at": "2026-11-02T00:00:00Z",
     "reset_in_seconds": 40_000, "limit_usd": Decimal(1), "used_usd": Decimal("0.0000009"),
     "reserved_usd": Decimal("0.0000004"), "remaining_usd": Decimal("0.9999987")},
    {"key": f"user:{MARKUP}:tokens:day", "scope": "user", "id": MARKUP, "metric": "tokens",
     "window": "day", "rolling": True, "limit": 1_000_000_000_000, "used": 123_456_789_012,
     "reserved": 700, "remaining": 876_543_210_288, "reset_at": "2026-11-02T00:00:00Z",
     "reset_in_seconds": 3725},
    {"key": "run:T-1:tokens:run", "scope": "run", "id": "T-1", "metric": "tokens",
     "window": "run", "rolling": False, "limit": 500_000, "used": 12, "reserved": 0,
     "remaining": 499_988, "reset_at": None, "reset_in_seconds": None},  # a run's lifetime
]
KEYS = [
    {"id": "key_0123456789abcdef", "name": "ci pipeline", "user": MARKUP, "plan": "pro",
     "features": ["chat", "code_review"], "models": ["gpt-4o*"],
     "limits": {"tokens_per_day": 50000, "cost_usd_per_day": 2.5},
     "created_at": 1_790_000_000, "revoked_at": 1_790_086_400, "expires_at": None},
    {"id": "key_fedcba9876543210", "name": None, "user": "bob", "plan": "free",
     "features": [], "models": [], "limits": {}, "created_at": 1_790_000_100,
     "revoked_at": None, "expires_at": 1_792_592_100},
]


def _capture(fn: Any, *args: Any) -> str:
    app = typer.Typer()
    app.command("a")(lambda: fn(*args))
    app.command("b")(lambda: None)
    return str(CliRunner().invoke(app, ["a"], env=NARROW, catch_exceptions=False).stdout)


def test_budgets_fit_80_columns() -> None:
    out = _capture(budgets_cli.render, LIMITS)
    _fits(out)
    _snapshot("budgets-80.txt", out)
    assert "876,543,210,288" in out and "$0.999999" in out and "1h 02m" in out
    assert "never (run)" in out
    wide = _capture(budgets_cli.render, LIMITS, True)
    assert "reserved" in wide and "2026-11-02T00:00:00Z" in wide


def test_budgets_csv_matches_json() -> None:
    rows = list(csv.DictReader(io.StringIO(_capture(budgets_cli.render_csv, LIMITS))))
    assert [r["key"] for r in rows] == [d["key"] for d in LIMITS]
    assert int(rows[1]["used"]) == 123_456_789_012 and rows[1]["rolling"] == "True"
    assert Decimal(rows[0]["remaining_usd"]) == Decimal("0.9999987")


def test_keys_list_fits_80_columns() -> None:
    out = _capture(keys_cli._show_list, KEYS, True, False)
    _fits(out)
    _snapshot("keys-80.txt", out)
    assert "key_0123456789abcdef" in out and MARKUP in out and "revoked" in out
    rows = list(csv.DictReader(io.StringIO(_capture(keys_cli._keys_csv, KEYS))))
    back = [{**r, "features": orjson.loads(r["features"]), "models": orjson.loads(r["models"]),
             "limits": orjson.loads(r["limits"]), "name": r["name"] or None,
             "created_at": int(r["created_at"]),
             "revoked_at": int(r["revoked_at"]) if r["revoked_at"] else None,
             "expires_at": int(r["expires_at"]) if r["expires_at"] else None} for r in rows]
    assert back == KEYS


def test_markup_in_created_keys_and_file_names_is_printed(tmp_path: Path) -> None:
    out = _capture(keys_cli._show_created, {**KEYS[0], "key": "tg-secret", "plan": "[bold]"})
    assert "user: [/]" in out and "plan: [bold]" in out and "tg-secret" in out
    from tallygate.cli.text import _print_table

    table = _capture(_print_table, [{"file": "[/]x.txt", "kind": "text", "tokens": 5,
                                     "exact": True}], "[red]counts")
    assert "[/]x.txt" in table and "[red]counts" in table
