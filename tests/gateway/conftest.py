from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tallygate.sim import SimServer
from tests.support.gateway import RunningGateway, running_gateway, running_sim, sim_policy

FEATURES = {
    "chat": {"max_input": 4000, "max_output": 100, "model": "gpt-4o-mini", "on_exceed": "trim"},
    "summarize": {"max_input": 50, "max_output": 50, "model": "gpt-4o-mini"},
    "claude": {"max_input": 4000, "max_output": 100, "model": "claude-haiku-4-5"},
    "default": {"max_output": 200},
}
PLANS = {"free": {"tokens_per_day": 2000}, "pro": {"tokens_per_day": 1_000_000}}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with running_sim() as (server, _):
        yield server


@pytest.fixture(params=["aiohttp", "lean"])
def make_gateway(
    sim: SimServer, tmp_path: Any, request: pytest.FixtureRequest
) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway on the simulator with the test policy (sections may be replaced).
    Every gateway test runs on both upstream transports (server.upstream)."""
    with ExitStack() as stack:

        def make(**sections: Any) -> RunningGateway:
            merged = {"features": FEATURES, "plans": PLANS,
                      "server": {"upstream": request.param}, **sections}
            sim.clear_faults()
            policy = sim_policy(sim.url, str(tmp_path), **merged)
            return stack.enter_context(running_gateway(policy))

        yield make


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway()
