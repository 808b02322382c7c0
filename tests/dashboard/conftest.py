"""A dashboard over real SQLite stores (ledger, keys, alert log, state), driven over ASGI."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tallygate.config import Policy
from tallygate.dashboard.app import Dashboard
from tallygate.dashboard.sources import Sources, open_sources
from tallygate.types import CallRecord, Outcome

ADMIN = "admin-key-for-tests"
VIEWER = "viewer-key-for-tests"
NASTY = '<img src=x onerror=alert(1)>[/]"\'&'


def policy(tmp: Path, **extra: Any) -> Policy:
    data: dict[str, Any] = {
        "storage": {"state": f"sqlite:///{tmp}/state.db", "ledger": f"sqlite:///{tmp}/l.db"},
        "admin_key": ADMIN, "dashboard": {"viewer_key": VIEWER},
        "plans": {"free": {"tokens_per_day": 2000}, "pro": {"tokens_per_day": 100000}},
        "features": {"chat": {"tokens_per_day": 50000}, NASTY: {}},
        "tiers": {"small": "gpt-4o-mini"},
    }
    data.update(extra)
    return Policy.from_mapping(data)


def rows(now: float) -> list[CallRecord]:
    return [
        CallRecord("r1", now - 30, Outcome.OK, 200, user=NASTY, feature="chat", run=NASTY,
                   step="review", step_attempt=1, model_used="gpt-4o", input_tokens=100,
                   output_tokens=20, cost_nusd=700_000, key_id="key_x"),
        CallRecord("r2", now - 20, Outcome.OK, 200, user="bob", feature=NASTY, run=NASTY,
                   step="review", step_attempt=2, model_used="gpt-4o", input_tokens=50,
                   output_tokens=10, cost_nusd=350_000),
        CallRecord("r3", now - 10, Outcome.REJECTED, 429, user="bob", feature="chat",
                   error_code="budget_exceeded"),
    ]


@dataclass
class Site:
    client: TestClient
    sources: Sources
    loop: asyncio.AbstractEventLoop
    ledger_path: Path  # the ledger's SQLite file, for a connection of the test's own

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def sign_in(self, key: str) -> Any:
        page = self.client.get("/dashboard/login")
        token = re.search(r'name="token" value="([^"]+)"', page.text)
        assert token is not None
        return self.client.post("/dashboard/login", data={"key": key, "token": token[1]},
                                follow_redirects=False)

    def csrf(self, path: str = "/dashboard/keys") -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.client.get(path).text)
        assert found is not None
        return found[1]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    loop = asyncio.new_event_loop()
    sources = loop.run_until_complete(open_sources(policy(tmp_path)))
    loop.run_until_complete(sources.ledger.write_batch(rows(time.time())))
    dashboard = Dashboard(sources)
    app = Starlette(routes=dashboard.routes())
    with TestClient(app, base_url="http://testserver") as client:
        yield Site(client, sources, loop, tmp_path / "l.db")
    loop.run_until_complete(dashboard.close())
    loop.close()
