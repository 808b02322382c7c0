"""One name check (config/names.py) behind every door: the policy loader, the CLI
(`keys create`, `flags set|clear`) and the admin API. Each door refuses the same typo
with the same "did you mean"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from starlette.applications import Starlette
from starlette.testclient import TestClient
from typer.testing import CliRunner

from tallygate.cli import flags as flags_cli
from tallygate.config import Policy, load_policy
from tallygate.config.names import PolicyNames
from tallygate.errors import ConfigError, InvalidRequest
from tallygate.gateway.admin import flag_routes
from tallygate.state import from_url
from tests.support.cli import cli_with

ADMIN = "names-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
POLICY = {
    "features": {"code_review": {"model": "gpt-4o"}, "chat": {"enabled": False}},
    "plans": {"free": {}, "enterprise": {}},
    "tiers": {"small": "gpt-4o-mini", "large": "gpt-4.1"},
}


def policy_with(**sections: object) -> dict[str, object]:
    return {**POLICY, **sections}


@pytest.mark.parametrize(("sections", "line"), [
    ({"limits": {"feature": {"code_reveiw": {"tokens_per_day": 5}}}},
     "limits.feature.code_reveiw: unknown feature 'code_reveiw' (did you mean 'code_review'?)"),
    ({"limits": {"model": {"gpt-4o-mni": {"tokens_per_day": 5}}}},
     "limits.model.gpt-4o-mni: unknown model 'gpt-4o-mni' (did you mean 'gpt-4o-mini'?)"),
    ({"routing": {"steps": {"review": "huge"}}},
     "routing.steps.review: unknown tier or model 'huge'"),
    ({"routing": {"steps": {"review": "smal"}}},
     "routing.steps.review: unknown tier or model 'smal' (did you mean 'small'?)"),
    ({"flags": {"code-review": False}},
     "flags.code-review: unknown feature 'code-review' (did you mean 'code_review'?)"),
    ({"tiers": {"small": "gpt-4o-mni"}}, "tiers.small: unknown model 'gpt-4o-mni'"),
    ({"features": {"chat": {"fallbacks": ["gpt-4o-mni"]}}},
     "features.chat.fallbacks[0]: unknown model 'gpt-4o-mni'"),
    ({"limits": {"plan": {"enterprize": {"tokens_per_day": 5}}}},
     "limits.plan.enterprize: unknown plan 'enterprize' (did you mean 'enterprise'?)"),
])
def test_policy_loader_refuses_each_typo(tmp_path: Path, sections: dict[str, object],
                                         line: str) -> None:
    path = tmp_path / "tallygate.yaml"
    path.write_text(json.dumps(policy_with(**sections)))
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert f"{path}: {line}" in caught.value.message


def test_known_names_load() -> None:
    policy = Policy.from_mapping(policy_with(
        models={"my-llama": {"provider": "local", "context_window": 8192}},
        limits={"feature": {"code_review": {"tokens_per_day": 5}, "default": {}},
                "model": {"gpt-4o-mini": {}, "my-llama": {}, "default": {}},
                "plan": {"default": {}, "free": {}}},
        routing={"steps": {"plan": "large", "review": "tier:small", "verify": "gpt-4o",
                           "local": "my-llama"}},
        flags={"code_review": False, "default": True},
    ))
    assert policy.unknown_features == "default"
    assert Policy.from_mapping({"unknown_features": "reject"}).unknown_features == "reject"
    with pytest.raises(ConfigError, match="unknown_features"):
        Policy.from_mapping({"unknown_features": "refuse"})


def test_allow_list_patterns() -> None:
    names = PolicyNames(Policy.from_mapping(POLICY))
    names.check_key(plan="free", features=["code_*", "default"], models=["gpt-4o*", "gpt-4o"])
    for kwargs in ({"features": ["zzz*"]}, {"models": ["nomodel-*"]},
                   {"models": ["tier:small"]}):
        with pytest.raises(InvalidRequest):
            names.check_key(plan="free", **kwargs)  # type: ignore[arg-type]


# -- the CLI door --------------------------------------------------------------------

@pytest.fixture
def cli() -> typer.Typer:
    return cli_with(flags_cli.register)


def test_cli_flags_refuse_a_typo_and_clear(cli: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "tallygate.yaml"
    path.write_text(json.dumps(POLICY))
    store = f"sqlite:///{tmp_path / 'state.db'}"
    common = ["--store", store, "--config", str(path)]
    runner = CliRunner()
    bad = runner.invoke(cli, ["flags", "set", "code-review", "off", *common])
    assert bad.exit_code != 0 and bad.exception is not None
    message = str(bad.exception)
    assert message == ("Unknown feature 'code-review' (did you mean 'code_review'?); "
                       "known features: chat, code_review, default.")
    with pytest.raises(InvalidRequest) as direct:  # the very function the CLI called
        PolicyNames(load_policy(path)).check_flag("code-review")
    assert direct.value.message == message

    ok = runner.invoke(cli, ["flags", "set", "chat", "on", *common])
    assert ok.exit_code == 0 and "chat: on" in ok.output
    cleared = runner.invoke(cli, ["flags", "clear", "chat", *common])
    assert cleared.exit_code == 0 and "chat: off (policy)" in cleared.output
    listed = runner.invoke(cli, ["flags", "list", "--json", *common])
    flags = {f["feature"]: f for f in json.loads(listed.output)["flags"]}
    assert flags["chat"] == {"feature": "chat", "on": False, "source": "policy"}
    assert runner.invoke(cli, ["flags", "clear", "chatt", *common]).exit_code != 0


def test_console_entry_point_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tallygate.cli.main import run

    path = tmp_path / "tallygate.yaml"
    path.write_text(json.dumps(POLICY))
    monkeypatch.setattr("sys.argv", ["tallygate", "flags", "set", "code-review", "off",
                                     "--store", f"sqlite:///{tmp_path / 's.db'}",
                                     "--config", str(path)])
    with pytest.raises(SystemExit) as caught:
        run()
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tallygate: error: Unknown feature 'code-review'") and "\n" not in err


# -- the admin API door --------------------------------------------------------------

async def test_admin_flags_refuse_a_typo_and_clear() -> None:
    policy = Policy.from_mapping(POLICY)
    store = from_url("memory://")
    static = {n: policy.flag(n) for n in policy.features}
    app = Starlette(routes=flag_routes(store, ADMIN, static=static,
                                       names=PolicyNames(policy)))
    with TestClient(app) as client:
        bad = client.put("/admin/flags/code-review", json={"on": False}, headers=AUTH)
        assert bad.status_code == 400
        error = bad.json()["error"]
        assert error["param"] == "feature" and error["message"] == (
            "Unknown feature 'code-review' (did you mean 'code_review'?); "
            "known features: chat, code_review, default.")
        assert await store.flags() == {}
        assert client.put("/admin/flags/chat", json={"on": True}, headers=AUTH).json()["on"]
        cleared = client.delete("/admin/flags/chat", headers=AUTH).json()
        assert cleared == {"feature": "chat", "on": False, "source": "policy", "cleared": True}
        assert await store.flags() == {}
        assert client.delete("/admin/flags/chatt", headers=AUTH).status_code == 400
