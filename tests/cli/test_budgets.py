"""`tallygate budgets` on a temporary SQLite state store after reserving and settling
known amounts: every figure shown is computed by hand below."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from tallygate.cli import budgets
from tallygate.config import load_policy
from tallygate.core.limits import Amounts, Identity, holds_for
from tallygate.keys import open_keystore
from tallygate.state import from_url
from tests.support.cli import cli_with

POLICY = """\
storage: {{state: 'sqlite:///{d}/state.db', ledger: 'sqlite:///{d}/ledger.db'}}
features:
  chat: {{max_output: 500, tokens_per_day: 50000}}
  summarize: {{max_output: 200}}
plans:
  free: {{tokens_per_day: 10000, requests_per_hour: 10}}
limits:
  global: {{tokens_per_hour: 100000}}
  key: {{tokens_per_hour: 20000}}
  model: {{gpt-4o-mini: {{cost_usd_per_day: 1}}}}
  run: {{tokens_per_day: 30000}}
"""

# Call 1 reserved 1,500 tokens / 2,000 nano-USD and settled at 1,200 tokens / 900 nano-USD;
# call 2 holds 700 tokens / 400 nano-USD (not settled). Both: user alice, key, run R1.
EXPECTED = {  # key scope → (limit, used, reserved, remaining)
    "global:tokens:hour": (100_000, 1_200, 700, 98_100),
    "feature:chat:tokens:day": (50_000, 1_200, 700, 48_100),
    "user:alice:tokens:day": (10_000, 1_200, 700, 8_100),
    "user:alice:requests:hour": (10, 1, 1, 8),
    "model:gpt-4o-mini:cost:day": (1_000_000_000, 900, 400, 999_998_700),
    "run:user.alice:R1:tokens:day": (30_000, 1_200, 700, 28_100),
}


def _away_from_hour_boundary() -> None:
    """Hour windows would reset between the reservation and the read: avoid the edge."""
    left = 3600 - time.time() % 3600
    if left < 10:
        time.sleep(left + 0.5)


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    _away_from_hour_boundary()
    config = tmp_path / "tallygate.yaml"
    config.write_text(POLICY.format(d=tmp_path))
    policy = load_policy(config)

    async def fill() -> str:
        keys = await open_keystore(policy.storage.ledger)
        key, _ = await keys.create("alice", "free")
        await keys.create("bob", "free")
        await keys.close()
        store = from_url(policy.storage.state)
        ident = Identity(key.id, "alice", "free", "R1")
        now = time.time()
        for rid, amounts in (("r1", Amounts(1500, 2000, 1)), ("r2", Amounts(700, 400, 1))):
            holds = holds_for(policy.limit_index, ident, feature="chat", model="gpt-4o-mini",
                              amounts=amounts)
            assert await store.reserve(rid, holds, lease=600, now=now) is None
        await store.settle("r1", {"tokens": 1200, "cost": 900, "requests": 1}, now=now)
        await store.close()
        return key.id

    key_id = asyncio.run(fill())
    return {"config": str(config), "key": key_id}


@pytest.fixture
def cli() -> typer.Typer:
    return cli_with(budgets.register)


def _json(cli: typer.Typer, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["budgets", *args, "--json"])
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def _by_key(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in data["limits"]}


def test_user_limits_are_the_hand_computed_ones(cli: typer.Typer, setup: dict[str, Any]) -> None:
    rows = _by_key(_json(cli, "--user", "alice", "--feature", "chat", "--run", "R1",
                         "--model", "gpt-4o-mini", "--config", setup["config"]))
    key_hour = f"key:{setup['key']}:tokens:hour"
    expected = {**EXPECTED, key_hour: (20_000, 1_200, 700, 18_100)}
    assert set(rows) == set(expected)
    for key, (limit, used, reserved, remaining) in expected.items():
        row = rows[key]
        assert (row["limit"], row["used"], row["reserved"], row["remaining"]) == (
            limit, used, reserved, remaining), key


def test_reset_times_are_the_window_ends(cli: typer.Typer, setup: dict[str, Any]) -> None:
    data = _json(cli, "--user", "alice", "--feature", "chat", "--config", setup["config"])
    rows = _by_key(data)
    now = datetime.fromisoformat(data["now"].replace("Z", "+00:00"))
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    next_hour = (now + timedelta(hours=1)).replace(minute=0, second=0)
    day_row = rows["user:alice:tokens:day"]
    assert day_row["reset_at"] == midnight.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert abs(day_row["reset_in_seconds"] - (midnight - now).total_seconds()) <= 1
    assert rows["global:tokens:hour"]["reset_at"] == next_hour.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert datetime.fromisoformat(day_row["reset_at"].replace("Z", "+00:00")).tzinfo == UTC


def test_cost_limits_carry_exact_usd(cli: typer.Typer, setup: dict[str, Any]) -> None:
    rows = _by_key(_json(cli, "--user", "alice", "--model", "gpt-4o-mini",
                         "--config", setup["config"]))
    cost = rows["model:gpt-4o-mini:cost:day"]
    assert cost["used_usd"] == pytest.approx(0.0000009)
    assert '"remaining_usd": 0.9999987' in CliRunner().invoke(
        cli, ["budgets", "--user", "alice", "--model", "gpt-4o-mini", "--json",
              "--config", setup["config"]]).stdout


def test_run_limits_only_with_run_and_features_enumerated(
    cli: typer.Typer, setup: dict[str, Any]
) -> None:
    rows = _by_key(_json(cli, "--user", "alice", "--config", setup["config"]))
    assert not any(k.startswith("run:") for k in rows)
    # Every configured feature is enumerated; summarize has no limits of its own.
    assert "feature:chat:tokens:day" in rows
    assert not any(k.startswith("feature:summarize") for k in rows)
    # Model limits need a model name: the policy names gpt-4o-mini, so it is listed.
    assert rows["model:gpt-4o-mini:cost:day"]["used"] == 900


def test_everyone_with_a_key_is_listed(cli: typer.Typer, setup: dict[str, Any]) -> None:
    rows = _by_key(_json(cli, "--config", setup["config"]))
    assert rows["user:alice:tokens:day"]["remaining"] == 8_100
    bob = rows["user:bob:tokens:day"]
    assert (bob["used"], bob["reserved"], bob["remaining"]) == (0, 0, 10_000)
    assert rows["global:tokens:hour"]["used"] == 1_200


def test_key_filter_and_user_without_key(cli: typer.Typer, setup: dict[str, Any]) -> None:
    rows = _by_key(_json(cli, "--key", setup["key"], "--config", setup["config"]))
    assert rows[f"key:{setup['key']}:tokens:hour"]["remaining"] == 18_100
    assert not any(k.startswith("user:bob") for k in rows)
    carol = _by_key(_json(cli, "--user", "carol", "--plan", "free",
                          "--config", setup["config"]))
    assert carol["user:carol:tokens:day"]["remaining"] == 10_000


def test_table_shows_the_numbers(cli: typer.Typer, setup: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli, ["budgets", "--user", "alice", "--feature", "chat",
                                      "--config", setup["config"]])
    assert result.exit_code == 0, result.output
    for text in ("8,100", "98,100", "48,100", "tokens/day", "tokens/hour", "in "):
        assert text in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--key", "key_nope"], "no key with id 'key_nope'"),
    (["--user", "zoe"], "user 'zoe' has no active key"),
])
def test_bad_selection_is_one_clear_line(cli: typer.Typer, setup: dict[str, Any],
                                         args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["budgets", *args, "--config", setup["config"]])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def test_missing_state_store_is_reported(cli: typer.Typer, tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(POLICY.format(d=tmp_path / "nowhere"))
    result = CliRunner().invoke(cli, ["budgets", "--config", str(config)])
    assert result.exit_code == 2
    assert "no state store at" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_state_file_owned_by_a_gateway_points_to_url(cli: typer.Typer,
                                                       setup: dict[str, Any]) -> None:
    """A one-worker gateway owns its SQLite state (owner mode): the local read is
    refused with the way to ask the gateway instead, and the owner keeps its figures."""
    import os

    policy = load_policy(setup["config"])
    owner = from_url(policy.storage.state, owner=True)
    try:
        result = CliRunner().invoke(cli, ["budgets", "--config", setup["config"]])
        assert result.exit_code == 2
        assert f"owned by process {os.getpid()}" in result.stderr
        assert "budgets --url" in result.stderr and "Traceback" not in result.output
    finally:
        asyncio.run(owner.close())
    assert _by_key(_json(cli, "--user", "alice", "--config", setup["config"])
                   )["user:alice:tokens:day"]["used"] == 1_200
