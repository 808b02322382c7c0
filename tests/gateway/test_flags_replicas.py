"""Run-time flags with two gateways sharing one real Redis: switched off on one (admin
API or CLI), refused by both within a second, on again without a restart."""

from __future__ import annotations

import time
from contextlib import ExitStack

import orjson
import typer
from typer.testing import CliRunner

from tallygate.cli import flags as flags_cli
from tallygate.sim import SimServer
from tests.support.gateway import ADMIN_KEY, RunningGateway, http, running_gateway, sim_policy
from tests.support.policies import FEATURES, PLANS
from tests.support.resilience import HELLO, post

# Registered here as in cli/main.py, so the test does not depend on that wiring.
cli_app = typer.Typer()
flags_cli.register(cli_app)


@cli_app.callback()
def _root() -> None:
    """tallygate"""


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}


def _pair(stack: ExitStack, sim: SimServer, redis_url: str, tmp_path) -> list[RunningGateway]:
    out = []
    for i in range(2):
        policy = sim_policy(sim.url, str(tmp_path / f"gw{i}"), features=FEATURES, plans=PLANS,
                            storage={"state": redis_url, "ledger": f"sqlite:///{tmp_path}/k.db"})
        out.append(stack.enter_context(running_gateway(policy)))
    return out


def _policy_file(tmp_path) -> str:
    """What the CLI reads to know the feature names (the gateways' features)."""
    path = tmp_path / "tallygate.yaml"
    path.write_text(orjson.dumps({"features": FEATURES, "plans": PLANS}).decode())
    return str(path)


def _status(gw: RunningGateway, key: str) -> tuple[int, str | None]:
    status, _, raw = post(gw, key, {"model": "gpt-4o-mini", "messages": HELLO},
                          **{"X-Tallygate-Feature": "chat"})
    code = orjson.loads(raw).get("error", {}).get("code") if status != 200 else None
    return status, code


def _until(gateways: list[RunningGateway], key: str, want: int, limit: float = 1.0) -> float:
    start = time.monotonic()
    while True:
        got = [_status(gw, key) for gw in gateways]
        if all(s == want for s, _ in got):
            if want == 403:
                assert all(code == "feature_disabled" for _, code in got)
            return time.monotonic() - start
        assert time.monotonic() - start < limit + 0.5, got
        time.sleep(0.05)


def test_flag_switched_on_one_gateway_applies_to_both(sim, redis_url, tmp_path) -> None:
    with ExitStack() as stack:
        gateways = _pair(stack, sim, redis_url, tmp_path)
        key = gateways[0].create_key("u", "pro")
        assert [s for s, _ in (_status(gw, key) for gw in gateways)] == [200, 200]
        status, _, _ = http("PUT", gateways[0].url + "/admin/flags/chat",
                            orjson.dumps({"on": False}), ADMIN)
        assert status == 200
        assert _until(gateways, key, 403) <= 1.0
        _, _, raw = http("GET", gateways[1].url + "/admin/flags", headers=ADMIN)
        flags = {f["feature"]: f for f in orjson.loads(raw)["data"]}
        assert flags["chat"] == {"feature": "chat", "on": False, "source": "runtime"}
        # The CLI against the store directly clears the run-time flag: the policy's
        # value (on) applies again on both.
        result = CliRunner().invoke(cli_app, ["flags", "clear", "chat", "--store", redis_url,
                                              "--config", _policy_file(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "chat: on (policy)" in result.output
        assert _until(gateways, key, 200) <= 1.0


def test_cli_through_the_admin_api(sim, redis_url, tmp_path) -> None:
    with ExitStack() as stack:
        gateways = _pair(stack, sim, redis_url, tmp_path)
        key = gateways[0].create_key("u", "pro")
        runner = CliRunner()
        result = runner.invoke(cli_app, ["flags", "set", "chat", "off", "--url", gateways[1].url,
                                         "--admin-key", ADMIN_KEY])
        assert result.exit_code == 0 and "chat: off" in result.output
        assert _until(gateways, key, 403) <= 1.0
        listed = runner.invoke(cli_app, ["flags", "list", "--json", "--url", gateways[0].url,
                                         "--admin-key", ADMIN_KEY])
        flags = {f["feature"]: f["on"] for f in orjson.loads(listed.output)["flags"]}
        assert flags["chat"] is False
        bad = http("PUT", gateways[0].url + "/admin/flags/chat", b'{"on": "no"}', ADMIN)
        assert bad[0] == 400
        runner.invoke(cli_app, ["flags", "set", "chat", "on", "--store", redis_url,
                                "--config", _policy_file(tmp_path)])
