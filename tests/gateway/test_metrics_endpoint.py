"""GET /metrics on a real gateway after a known workload through the openai SDK: each
series equals what the ledger recorded for that workload."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tallygate.gateway.app import Gateway
from tallygate.observe import Observability, install
from tallygate.types import Outcome
from tests.support import gateway as support
from tests.support.gateway import RunningGateway, http

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


class ObservedGateway(Gateway):
    """The gateway with observability mounted, as Gateway.startup is to do it."""

    observe: Observability | None = None

    async def startup(self) -> None:
        await super().startup()
        if getattr(self, "observe", None) is None or self.observe is None:
            assert self.runtime is not None and self.ops is not None
            self.observe = install(self.runtime, self.policy)
            for route in self.observe.routes:
                self.ops.router.routes.insert(0, route)

    async def shutdown(self) -> None:
        if self.observe is not None:
            await self.observe.close()
        await super().shutdown()


@pytest.fixture
def observed(make_gateway: Callable[..., RunningGateway],
             monkeypatch: pytest.MonkeyPatch) -> RunningGateway:
    monkeypatch.setattr(support, "Gateway", ObservedGateway)
    return make_gateway(routing={"steps": {"planning": "gpt-4o-mini"}},
                        limits={"global": {"tokens_per_day": 1_000_000}})


def _scrape(gw: RunningGateway) -> tuple[str, dict[Any, float]]:
    status, headers, body = http("GET", gw.url + "/metrics")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return body.decode(), out


def _get(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_after_known_workload(observed: RunningGateway) -> None:
    key = observed.create_key("alice", "pro")
    client = openai.OpenAI(base_url=observed.url + "/v1", api_key=key, max_retries=0)
    step = {"X-Tallygate-Feature": "chat", "X-Tallygate-Step": "planning",
            "X-Tallygate-Run": "run-1"}
    replies = [client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                              extra_headers=step) for _ in range(3)]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "word " * 400}],
            extra_headers={"X-Tallygate-Feature": "summarize"})
    rows = observed.rows()
    assert len(rows) == 4
    gw = observed.gateway
    assert isinstance(gw, ObservedGateway) and gw.observe is not None and gw.runtime
    observed.call(gw.observe.metrics.refresh, gw.runtime.store, time.time())

    text, s = _scrape(observed)
    labels = {"feature": "chat", "model": "gpt-4o-mini", "step": "planning"}
    prompt = sum(r.usage.prompt_tokens for r in replies)
    completion = sum(r.usage.completion_tokens for r in replies)
    assert _get(s, "tallygate_tokens_total", direction="input", **labels) == prompt
    assert _get(s, "tallygate_tokens_total", direction="output", **labels) == completion
    ok_cost = sum(r.cost_nusd for r in rows if r.outcome is Outcome.OK)
    assert ok_cost > 0
    assert _get(s, "tallygate_cost_usd_total", feature="chat", model="gpt-4o-mini") == \
        pytest.approx(ok_cost / 1e9, rel=1e-12)
    req = "tallygate_requests_total"
    assert _get(s, req, feature="chat", model="gpt-4o-mini", outcome="ok") == 3
    assert _get(s, req, feature="summarize", model="gpt-4o-mini", outcome="rejected") == 1
    dur = "tallygate_request_duration_seconds_count"
    assert _get(s, dur, feature="chat", model="gpt-4o-mini") == 3
    assert _get(s, "tallygate_upstream_duration_seconds_count", feature="chat",
                model="gpt-4o-mini") == 3
    assert _get(s, "tallygate_context_utilization_ratio_count", model="gpt-4o-mini") == 3
    used = prompt + completion
    assert _get(s, "tallygate_budget_remaining_tokens",
                scope="global:tokens:day") == 1_000_000 - used
    assert "alice" not in text and "run-1" not in text  # high-cardinality labels off
