"""Fixtures every layer may use (registered by tests/conftest.py): the real Redis and
PostgreSQL servers, the simulator, and gateways on it.

Gateway tests run on the lean upstream transport; a module that exercises the upstream
itself (streams, faults, retries, disconnects) sets `BOTH_TRANSPORTS = True` and runs on
aiohttp's too (`server.upstream`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tallygate.sim import SimServer
from tests.support.gateway import RunningGateway, running_gateway, running_sim, sim_policy
from tests.support.policies import FEATURES, PLANS
from tests.support.servers import postgres_server, redis_server

TRANSPORTS = ["aiohttp", "lean"]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, for the whole session."""
    with redis_server() as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (run as the `postgres` user) on a free loopback port."""
    with postgres_server() as server:
        yield server.url


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with running_sim() as (server, _):
        yield server


@pytest.fixture
def make_gateway(
    sim: SimServer, tmp_path: Any, transport: str
) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway on the simulator with the test policy (sections may be replaced)."""
    with ExitStack() as stack:

        def make(**sections: Any) -> RunningGateway:
            merged = {"features": FEATURES, "plans": PLANS,
                      "server": {"upstream": transport}, **sections}
            sim.clear_faults()
            policy = sim_policy(sim.url, str(tmp_path), **merged)
            return stack.enter_context(running_gateway(policy))

        yield make


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The upstream transports a test runs on (see the module docstring)."""
    if "transport" in metafunc.fixturenames:
        both = getattr(metafunc.module, "BOTH_TRANSPORTS", False)
        metafunc.parametrize("transport", TRANSPORTS if both else ["lean"])


@pytest.fixture
def no_blocking() -> Iterator[Any]:
    """Fail a test when tallygate's code blocks an event loop (sleep, file or socket I/O,
    SQLite, locks) outside the places where it does so on purpose, each said why."""
    from blockbuster import BlockBuster

    buster = BlockBuster(["tallygate"])
    for filename, functions, why in ALLOWED_BLOCKING:
        del why
        for name in buster.functions:
            buster.functions[name].can_block_in(filename, functions)
    buster.activate()
    try:
        yield buster
    finally:
        buster.deactivate()


# Blocking calls tallygate makes on an event loop by design, each with why (a frame of
# one of these functions anywhere on the stack allows the call):
ALLOWED_BLOCKING: list[tuple[str, set[str], str]] = [
    ("tallygate/gateway/app.py", {"startup", "shutdown"},
     "stores open before the first request and close after the last"),
    ("tallygate/ledger/journal.py", {"append", "_open_segment", "commit"},
     "one write(2) of a journal line before the answer (the durability contract), one "
     "unlink once a batch is in the ledger"),
    ("tallygate/ledger/base.py", {"replay_orphans"},
     "journals left by dead processes, read once as the writer starts"),
    ("tallygate/state/redis.py", {"_script_source"}, "the Lua sources, read once per process"),
    ("tallygate/extras.py", {"redis_client_identity"},
     "redis-py's version, read once per process"),
    ("tallygate/observe/loop_lag.py", {"stop"},
     "the stall monitor's watchdog thread is joined as the monitor stops (at shutdown)"),
]
