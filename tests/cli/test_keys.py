"""`tallygate keys …` against a temp SQLite store (--store) and against a real uvicorn
serving the admin routes (--url)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
import uvicorn
from starlette.applications import Starlette
from typer.testing import CliRunner

from tallygate.cli import keys as keys_cli
from tallygate.keys import MemoryKeyStore, open_keystore
from tests.support.cli import cli_with
from tests.support.servers import free_port

ADMIN = "cli-admin-key"


@pytest.fixture
def app() -> typer.Typer:
    return cli_with(keys_cli.register)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run_ok(runner: CliRunner, app: typer.Typer, *args: str, **env: str) -> str:
    result = runner.invoke(app, list(args), env=env or None)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def run_fail(runner: CliRunner, app: typer.Typer, *args: str, **env: str) -> str:
    result = runner.invoke(app, list(args), env=env or None)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    err = result.stderr.strip()
    assert err.startswith("tallygate: error: ") and "\n" not in err
    assert "Traceback" not in result.stdout + result.stderr
    return err


def verify(url: str, secret: str) -> object:
    async def go() -> object:
        store = await open_keystore(url)
        try:
            return await store.verify(secret)
        finally:
            await store.close()

    return asyncio.run(go())


POLICY = ("features: {chat: {}, summarize: {}, code_review: {}}\n"
          "plans: {free: {tokens_per_day: 10}, pro: {tokens_per_day: 100},"
          " enterprise: {tokens_per_day: 1000}}\n")


def test_store_create_list_revoke(runner: CliRunner, app: typer.Typer, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'k.db'}"
    policy = tmp_path / "tallygate.yaml"
    policy.write_text(POLICY)
    out = run_ok(runner, app, "keys", "create", "--user", "u1", "--plan", "pro",
                 "--feature", "chat", "--feature", "summarize", "--model", "gpt-4o",
                 "--name", "ci", "--limit", "tokens_per_day=50000",
                 "--limit", "cost_usd_per_day=2.5", "--json", "--store", store,
                 "--config", str(policy))
    data = json.loads(out)
    assert list(data)[:2] == ["id", "key"]
    assert data["features"] == ["chat", "summarize"] and data["models"] == ["gpt-4o"]
    assert data["limits"] == {"tokens_per_day": 50000, "cost_usd_per_day": 2.5}
    key = verify(store, data["key"])
    assert key is not None and key.id == data["id"]  # type: ignore[attr-defined]

    pretty = run_ok(runner, app, "keys", "create", "--user", "u2", "--plan", "free",
                    "--store", store)
    assert "shown only once" in pretty and "tg-" in pretty

    listed = json.loads(run_ok(runner, app, "keys", "list", "--json", "--store", store))
    assert sorted(k["user"] for k in listed["keys"]) == ["u1", "u2"]
    assert data["key"] not in json.dumps(listed)
    table = run_ok(runner, app, "keys", "list", "--store", store)
    assert data["id"] in table

    assert "Revoked" in run_ok(runner, app, "keys", "revoke", data["id"], "--store", store)
    assert verify(store, data["key"]) is None
    listed = json.loads(run_ok(runner, app, "keys", "list", "--json", "--store", store))
    assert len(listed["keys"]) == 1
    everything = json.loads(run_ok(runner, app, "keys", "list", "--all", "--json",
                                   "--store", store))
    assert len(everything["keys"]) == 2


@pytest.mark.parametrize(("option", "typo", "hint"), [
    ("--plan", "enterprize", "enterprise"),
    ("--feature", "code_reveiw", "code_review"),
    ("--model", "gpt-4o-mni", "gpt-4o-mini"),
])
def test_create_refuses_a_typo(runner: CliRunner, app: typer.Typer, tmp_path: Path,
                               option: str, typo: str, hint: str) -> None:
    """The CLI door: config/names.py refuses the name before anything is written."""
    store = f"sqlite:///{tmp_path / 'k.db'}"
    policy = tmp_path / "tallygate.yaml"
    policy.write_text(POLICY)
    args = {"--plan": "pro"} | {option: typo}
    flat = [x for pair in args.items() for x in pair]
    err = run_fail(runner, app, "keys", "create", "--user", "u", *flat, "--store", store,
                   "--config", str(policy))
    assert typo in err and f"did you mean {hint!r}" in err
    listed = json.loads(run_ok(runner, app, "keys", "list", "--json", "--store", store,
                               "--config", str(policy)))
    assert listed["keys"] == []


def test_store_errors_are_one_line(runner: CliRunner, app: typer.Typer, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'k.db'}"
    assert "no key" in run_fail(runner, app, "keys", "revoke", "key_nope", "--store", store)
    assert "tokens_per_day=50000" in run_fail(
        runner, app, "keys", "create", "--user", "u", "--plan", "p", "--limit", "oops",
        "--store", store)
    assert "Unknown limit" in run_fail(
        runner, app, "keys", "create", "--user", "u", "--plan", "p", "--limit",
        "tokens_per_week=5", "--store", store)
    assert "Unsupported key store" in run_fail(runner, app, "keys", "list",
                                               "--store", "redis://127.0.0.1/0")
    missing_dir = tmp_path / "no" / "such" / "dir" / "k.db"
    assert "Cannot open" in run_fail(runner, app, "keys", "list",
                                     "--store", f"sqlite:///{missing_dir}")
    assert "policy file not found" in run_fail(runner, app, "keys", "list",
                                               "--config", str(tmp_path / "none.yaml"))


def test_store_from_policy_file(runner: CliRunner, app: typer.Typer, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    policy = tmp_path / "tallygate.yaml"
    policy.write_text(f"storage:\n  state: memory://\n  ledger: sqlite:///{db}\n"
                      "plans: {free: {}}\n")
    data = json.loads(run_ok(runner, app, "keys", "create", "--user", "u", "--plan", "free",
                             "--json", "--config", str(policy)))
    assert verify(f"sqlite:///{db}", data["key"]) is not None


@pytest.fixture
def gateway() -> Iterator[tuple[str, MemoryKeyStore]]:
    """A real uvicorn on a free loopback port serving only the admin routes."""
    from tallygate.gateway.admin import admin_routes

    store = MemoryKeyStore()
    port = free_port()
    config = uvicorn.Config(Starlette(routes=admin_routes(store, ADMIN)), host="127.0.0.1",
                            port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(10)


def test_url_create_list_revoke(runner: CliRunner, app: typer.Typer,
                                gateway: tuple[str, MemoryKeyStore]) -> None:
    url, store = gateway
    data = json.loads(run_ok(runner, app, "keys", "create", "--user", "u1", "--plan", "pro",
                             "--model", "gpt-4o", "--limit", "requests_per_minute=60",
                             "--json", "--url", url, TALLYGATE_ADMIN_KEY=ADMIN))
    assert data["key"].startswith("tg-") and "object" not in data
    assert data["limits"] == {"requests_per_minute": 60}
    assert asyncio.run(store.verify(data["key"])) is not None

    listed = json.loads(run_ok(runner, app, "keys", "list", "--json", "--url", url,
                               "--admin-key", ADMIN))
    assert [k["id"] for k in listed["keys"]] == [data["id"]]
    assert data["key"] not in json.dumps(listed)

    run_ok(runner, app, "keys", "revoke", data["id"], "--url", url, "--admin-key", ADMIN)
    assert asyncio.run(store.verify(data["key"])) is None
    assert "no key" in run_fail(runner, app, "keys", "revoke", "key_nope", "--url", url,
                                "--admin-key", ADMIN)


def test_url_errors_are_one_line(runner: CliRunner, app: typer.Typer,
                                 gateway: tuple[str, MemoryKeyStore]) -> None:
    url, _ = gateway
    err = run_fail(runner, app, "keys", "list", "--url", url, "--admin-key", "wrong")
    assert "401" in err and "invalid_api_key" in err and "wrong" not in err
    assert "--admin-key" in run_fail(runner, app, "keys", "list", "--url", url)
    dead = f"http://127.0.0.1:{free_port()}"
    assert "cannot reach the gateway" in run_fail(runner, app, "keys", "list", "--url", dead,
                                                  "--admin-key", ADMIN)


def test_store_update(runner: CliRunner, app: typer.Typer, tmp_path: Path) -> None:
    """Only what is given changes; the secret and the id stay; names are checked as at
    creation; every refusal is one line and nothing is written."""
    store = f"sqlite:///{tmp_path / 'k.db'}"
    policy = tmp_path / "tallygate.yaml"
    policy.write_text(POLICY)
    where = ["--store", store, "--config", str(policy)]
    made = json.loads(run_ok(runner, app, "keys", "create", "--user", "u1", "--plan", "pro",
                             "--feature", "chat", "--name", "ci", "--json", *where))
    data = json.loads(run_ok(runner, app, "keys", "update", made["id"], "--plan",
                             "enterprise", "--feature", "summarize", "--feature", "chat",
                             "--limit", "tokens_per_day=70", "--json", *where))
    assert (data["id"], data["user"], data["name"]) == (made["id"], "u1", "ci")
    assert data["plan"] == "enterprise" and data["features"] == ["summarize", "chat"]
    assert data["limits"] == {"tokens_per_day": 70}
    key = verify(store, made["key"])  # the same secret, the new settings
    assert key.plan == "enterprise" and key.limits == {"tokens_per_day": 70}  # type: ignore[attr-defined]

    line = run_ok(runner, app, "keys", "update", made["id"], "--all-features", "--no-limits",
                  "--no-name", *where)
    assert line.strip() == (f"Updated {made['id']}: plan enterprise, features all, "
                            "models all, own limits none, expires never.")
    key = verify(store, made["key"])
    assert (key.features, key.limits, key.name) == ((), {}, None)  # type: ignore[attr-defined]

    for args, says in [
        (["--plan", "enterprize"], "did you mean 'enterprise'"),
        (["--feature", "code_reveiw"], "did you mean 'code_review'"),
        (["--limit", "tokens_per_week=5"], "Unknown limit"),
        (["--feature", "chat", "--all-features"], "give one or the other"),
        ([], "Nothing to change"),
    ]:
        assert says in run_fail(runner, app, "keys", "update", made["id"], *args, *where)
    assert verify(store, made["key"]).plan == "enterprise"  # type: ignore[attr-defined]
    assert "no key with id 'key_nope'" in run_fail(runner, app, "keys", "update", "key_nope",
                                                   "--plan", "pro", *where)
    run_ok(runner, app, "keys", "revoke", made["id"], *where)
    assert "is revoked" in run_fail(runner, app, "keys", "update", made["id"], "--plan",
                                    "pro", *where)


def test_url_update(runner: CliRunner, app: typer.Typer,
                    gateway: tuple[str, MemoryKeyStore]) -> None:
    url, store = gateway
    made = json.loads(run_ok(runner, app, "keys", "create", "--user", "u1", "--plan", "pro",
                             "--json", "--url", url, "--admin-key", ADMIN))
    data = json.loads(run_ok(runner, app, "keys", "update", made["id"], "--model", "gpt-4o*",
                             "--limit", "requests_per_minute=5", "--json", "--url", url,
                             "--admin-key", ADMIN))
    assert data["models"] == ["gpt-4o*"] and data["limits"] == {"requests_per_minute": 5}
    assert "object" not in data
    key = asyncio.run(store.verify(made["key"]))
    assert key is not None and key.models == ("gpt-4o*",)
    assert "no key" in run_fail(runner, app, "keys", "update", "key_nope", "--plan", "pro",
                                "--url", url, "--admin-key", ADMIN)


def test_store_expiry_and_rotate(runner: CliRunner, app: typer.Typer, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'k.db'}"
    made = json.loads(run_ok(runner, app, "keys", "create", "--user", "u1", "--plan", "pro",
                             "--expires", "30d", "--json", "--store", store))
    assert abs(made["expires_at"] - (time.time() + 30 * 86_400)) < 60
    panel = run_ok(runner, app, "keys", "create", "--user", "u2", "--plan", "pro",
                   "--expires", "2099-01-31", "--store", store)
    assert "expires: 2099-01-31 00:00 UTC" in panel
    assert "--expires" in run_fail(runner, app, "keys", "create", "--user", "u3", "--plan",
                                   "pro", "--expires", "soon", "--store", store)
    assert "not in the future" in run_fail(runner, app, "keys", "create", "--user", "u3",
                                           "--plan", "pro", "--expires", "2001-01-01",
                                           "--store", store)
    line = run_ok(runner, app, "keys", "update", made["id"], "--no-expiry", "--store", store)
    assert line.strip().endswith("expires never.")
    assert verify(store, made["key"]).expires_at is None  # type: ignore[attr-defined]
    assert "expires 2099-06-01T00:00:00Z" in run_ok(
        runner, app, "keys", "update", made["id"], "--expires", "2099-06-01", "--store", store)

    rotated = json.loads(run_ok(runner, app, "keys", "rotate", made["id"], "--json",
                                "--store", store))
    assert rotated["id"] == made["id"] and rotated["key"] != made["key"]
    assert verify(store, made["key"]) is None
    assert verify(store, rotated["key"]).id == made["id"]  # type: ignore[attr-defined]
    shown = run_ok(runner, app, "keys", "rotate", made["id"], "--store", store)
    assert "New secret" in shown and "shown only once" in shown
    assert "no key with id 'key_nope'" in run_fail(runner, app, "keys", "rotate", "key_nope",
                                                   "--store", store)


def test_url_rotate(runner: CliRunner, app: typer.Typer,
                    gateway: tuple[str, MemoryKeyStore]) -> None:
    url, store = gateway
    made = json.loads(run_ok(runner, app, "keys", "create", "--user", "u1", "--plan", "pro",
                             "--json", "--url", url, "--admin-key", ADMIN))
    rotated = json.loads(run_ok(runner, app, "keys", "rotate", made["id"], "--json",
                                "--url", url, "--admin-key", ADMIN))
    assert rotated["key"] != made["key"] and "object" not in rotated
    assert asyncio.run(store.verify(made["key"])) is None
    assert asyncio.run(store.verify(rotated["key"])) is not None
    assert "no key" in run_fail(runner, app, "keys", "rotate", "key_nope", "--url", url,
                                "--admin-key", ADMIN)
