"""`tallygate demo` end to end (a short run through the CLI on loopback only): the reports
are printed, the free user is refused, the HTML report is self-contained with its charts,
and the ledger holds every workflow step of every ticket."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from tallygate.cli import demo
from tallygate.demo.results import bucket_rows
from tallygate.demo.workload import CHAT_USERS, STEPS, TICKETS, build_workload
from tallygate.ledger import open_ledger
from tests.support.cli import cli_with


def _cli() -> typer.Typer:
    return cli_with(demo.register)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "r.html"
    result = CliRunner().invoke(_cli(), ["demo", "--seconds", "1", "--dir", str(tmp / "data"),
                                         "--out", str(out)])
    return {"result": result, "dir": tmp / "data", "html": out}


def _rows(directory: Path) -> list[Any]:
    async def read() -> list[Any]:
        store = await open_ledger(f"sqlite:///{directory / 'tallygate.db'}")
        try:
            return await store.records()
        finally:
            await store.close()

    return asyncio.run(read())


def test_demo_prints_every_report(run: dict[str, Any]) -> None:
    result = run["result"]
    assert result.exit_code == 0, result.output
    out = result.stdout
    for section in ("Usage by step", "Usage by feature", "Usage by user", "Costliest steps",
                    "Runs that looped most", "What if step 'verification' used gpt-4o-mini",
                    "saving $", "HTML report:"):
        assert section in out, section
    assert re.search(r"alice: \d+ calls refused with 429 budget_exceeded", out)
    assert "unexpected error" not in out


def test_free_user_runs_out_and_is_counted_as_rejected(run: dict[str, Any]) -> None:
    rows = _rows(run["dir"])
    alice = [r for r in rows if r.user == "alice"]
    rejected = [r for r in alice if r.outcome == "rejected"]
    assert rejected and any(r.outcome == "ok" for r in alice)
    assert all(r.status == 429 for r in rejected)
    # The others stay within their plans.
    assert not [r for r in rows if r.outcome == "rejected" and r.user != "alice"]


def test_ledger_has_every_step_of_every_ticket(run: dict[str, Any]) -> None:
    rows = _rows(run["dir"])
    assert len(rows) == build_workload().total_calls
    for i in range(1, len(TICKETS) + 1):
        steps = {r.step for r in rows if r.run == f"TICKET-{i}" and r.outcome == "ok"}
        assert steps == set(STEPS), f"TICKET-{i}: {steps}"
    models = {r.step: r.model_used for r in rows if r.step}
    assert models == {"planning": "gpt-4.1", "execution": "gpt-4o", "review": "gpt-4o",
                      "verification": "gpt-4o"}
    assert max(r.step_attempt or 0 for r in rows if r.step == "review") >= 2
    assert {r.user for r in rows if r.feature == "chat"} == {u[0] for u in CHAT_USERS}
    assert all(r.cost_nusd > 0 for r in rows if r.outcome == "ok")


def test_html_report_is_self_contained_with_charts(run: dict[str, Any]) -> None:
    html = run["html"].read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    for forbidden in ("http://", "https://", "<script", "<link", "<img", "@import", "url("):
        assert forbidden not in html, forbidden
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) >= 5  # 2 timelines, cost by step, loops, what-if
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    for text in ("Tokens by step over time", "Tokens by feature over time",
                 "Cost by workflow step", "looped most", "What if verification",
                 "Per user", "alice", "TICKET-", "<rect"):
        assert text in html, text
    assert 'class="warn"><td>alice</td>' in html


def test_demo_json_and_temporary_storage(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(_cli(), ["demo", "--seconds", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    assert (tmp_path / "tallygate-report.html").is_file()  # the default --out
    assert not Path(data["directory"]).exists()  # the temporary storage is gone
    assert data["calls"] == build_workload().total_calls
    assert data["client"]["by_user"]["alice"]["rejected"] >= 1
    assert {r["key"] for r in data["by_step"]["rows"]} >= set(STEPS)
    assert data["what_if"]["saving_nusd"] > 0
    rejected = {r["key"]: r["rejected"] for r in data["by_user"]["rows"]}
    assert rejected["alice"] == data["client"]["by_user"]["alice"]["rejected"]


def test_workload_is_deterministic_and_vague_tickets_loop_more() -> None:
    a, b = build_workload(7), build_workload(7)
    assert a == b and build_workload(8) != a
    loops: dict[str, list[int]] = {}
    for seed in range(20):
        for s in build_workload(seed).sessions:
            if s.spec is not None:
                loops.setdefault(s.spec, []).append(
                    max(c.attempt or 0 for c in s.calls if c.step == "review") - 1)
    mean = {k: sum(v) / len(v) for k, v in loops.items()}
    assert mean["clear"] < mean["partial"] < mean["vague"]
    assert all(0 <= n <= 3 for v in loops.values() for n in v)


def test_bucket_rows_sums_tokens_per_bucket() -> None:
    rows = [(100.0, "planning", "coding", 10), (105.0, None, "chat", 5),
            (110.0, "review", "coding", 7), (110.0, "planning", "coding", 1)]
    t = bucket_rows(rows, buckets=2)
    assert t.bucket_seconds == 5.0 and t.start == 100.0
    assert t.by_step == {"planning": [10, 1], "(no step)": [0, 5], "review": [0, 7]}
    assert t.by_feature == {"coding": [10, 8], "chat": [0, 5]}
    assert bucket_rows([]).buckets == 0


def test_demo_prices_with_the_configs_models(tmp_path: Path) -> None:
    """--config: the demo keeps its own features and limits but prices with the policy's
    `models:`, and the tallygate.yaml it leaves behind carries them (what-if agrees)."""
    from tallygate.config import load_policy

    config = tmp_path / "prices.yaml"
    config.write_text("models:\n  gpt-4o-mini: {input_per_mtok: 100, output_per_mtok: 400}\n")
    result = CliRunner().invoke(_cli(), ["demo", "--seconds", "1", "--json", "--config",
                                         str(config), "--dir", str(tmp_path / "d"),
                                         "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    # gpt-4o-mini now costs more than gpt-4o: moving verification to it would cost more.
    assert data["what_if"]["model"] == "gpt-4o-mini"
    assert data["what_if"]["what_if_nusd"] > data["what_if"]["current_nusd"] > 0
    left = load_policy(tmp_path / "d" / "tallygate.yaml")
    assert left.models["gpt-4o-mini"]["input_per_mtok"] == 100
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [1, 2]\n")
    result = CliRunner().invoke(_cli(), ["demo", "--seconds", "1", "--config", str(bad)])
    assert result.exit_code == 2 and "bad.yaml" in result.output
