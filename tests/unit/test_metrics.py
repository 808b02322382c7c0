"""MetricsRecorder: after a known sequence of CallRecords, every series of SPEC §7 holds the
value the sequence implies (scraped from the text exposition, as Prometheus would)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tallygate.config import Policy
from tallygate.core.catalog import Catalog
from tallygate.observe.metrics import MetricsRecorder, budget_scopes
from tallygate.state.memory import MemoryStore
from tallygate.types import CallRecord, Hold, Metric, Outcome, Window

POLICY = {
    "features": {"chat": {"model": "gpt-4o-mini"}, "review": {"tokens_per_day": 5000}},
    "routing": {"steps": {"planning": "gpt-4o", "review": "gpt-4o-mini"}},
    "limits": {"global": {"tokens_per_minute": 10_000, "requests_per_minute": 5}},
}


def _policy(**extra: Any) -> Policy:
    return Policy.from_mapping({**POLICY, **extra})


def _rows() -> list[CallRecord]:
    ok = dict(outcome=Outcome.OK, status=200, provider="openai")
    return [
        CallRecord("a", 100.0, feature="chat", step="planning", model_used="gpt-4o",
                   input_tokens=12_800, output_tokens=50, cached_tokens=800,
                   cost_nusd=1_234_567, latency_ms=300, user="alice", run="r1", **ok),
        CallRecord("b", 101.0, feature="chat", step="planning", model_used="gpt-4o",
                   input_tokens=200, output_tokens=30, reasoning_tokens=10,
                   cost_nusd=1, latency_ms=700, user="bob", run="r1", **ok),
        CallRecord("c", 102.0, feature="secret-x", step="loop-17", model_used="gpt-4o-mini",
                   input_tokens=5, output_tokens=5, cost_nusd=99, latency_ms=20,
                   outcome=Outcome.TRIMMED, status=200, user="alice"),
        CallRecord("d", 103.0, feature="chat", model_requested="no-such-model-xyz",
                   outcome=Outcome.REJECTED, status=429, latency_ms=1, user="carol"),
        CallRecord("e", 104.0, feature="review", step="review", model_used="gpt-4o-mini",
                   outcome=Outcome.ERROR, status=502, latency_ms=2_000, user="bob"),
    ]


def scrape(recorder: MetricsRecorder) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = recorder.exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def series(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped[(name, tuple(sorted(labels.items())))]


def names(scraped: dict[Any, float], name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in scraped if n == name]


@pytest.fixture
def recorder() -> MetricsRecorder:
    policy = _policy()
    rec = MetricsRecorder(policy, Catalog(policy.models))
    for row in _rows():
        rec.record(row)
    return rec


def test_token_counters_by_direction(recorder: MetricsRecorder) -> None:
    s = scrape(recorder)
    t = "tallygate_tokens_total"
    base = {"feature": "chat", "model": "gpt-4o", "step": "planning"}
    assert series(s, t, direction="input", **base) == 13_000
    assert series(s, t, direction="output", **base) == 80
    assert series(s, t, direction="cached", **base) == 800
    assert series(s, t, direction="reasoning", **base) == 10
    # Unconfigured feature and step collapse to "other".
    assert series(s, t, direction="input", feature="other", model="gpt-4o-mini",
                  step="other") == 5
    assert len(names(s, t)) == 6


def test_cost_and_requests(recorder: MetricsRecorder) -> None:
    s = scrape(recorder)
    assert series(s, "tallygate_cost_usd_total", feature="chat", model="gpt-4o") == \
        pytest.approx(0.001234568)
    assert series(s, "tallygate_cost_usd_total", feature="other", model="gpt-4o-mini") == \
        pytest.approx(99e-9)
    r = "tallygate_requests_total"
    assert series(s, r, feature="chat", model="gpt-4o", outcome="ok") == 2
    assert series(s, r, feature="other", model="gpt-4o-mini", outcome="trimmed") == 1
    # An unknown requested model must not become a label value.
    assert series(s, r, feature="chat", model="other", outcome="rejected") == 1
    assert series(s, r, feature="review", model="gpt-4o-mini", outcome="error") == 1
    assert sum(v for (n, _), v in s.items() if n == r) == 5


def test_histograms(recorder: MetricsRecorder) -> None:
    s = scrape(recorder)
    d = "tallygate_request_duration_seconds"
    assert series(s, d + "_count", feature="chat", model="gpt-4o") == 2
    assert series(s, d + "_sum", feature="chat", model="gpt-4o") == pytest.approx(1.0)
    assert series(s, d + "_bucket", feature="chat", model="gpt-4o", le="0.5") == 1
    assert series(s, d + "_count", feature="chat", model="other") == 1  # rejected counts
    u = "tallygate_upstream_duration_seconds"
    # Rejected calls never reached the provider.
    assert {"feature": "chat", "model": "other"} not in names(s, u + "_count")
    assert series(s, u + "_sum", feature="review", model="gpt-4o-mini") == pytest.approx(2.0)
    c = "tallygate_context_utilization_ratio"
    window = Catalog(_policy().models).get("gpt-4o").context_window
    assert series(s, c + "_count", model="gpt-4o") == 2
    assert series(s, c + "_sum", model="gpt-4o") == pytest.approx((12_800 + 200) / window)
    assert series(s, c + "_bucket", model="gpt-4o", le="0.1") == 2


def test_no_user_or_run_labels_by_default(recorder: MetricsRecorder) -> None:
    text = recorder.exposition().decode()
    assert "alice" not in text and "r1" not in text and 'user="' not in text


def test_high_cardinality_labels_when_configured() -> None:
    policy = _policy(metrics={"high_cardinality_labels": ["user", "run"]})
    rec = MetricsRecorder(policy, Catalog(policy.models))
    for row in _rows():
        rec.record(row)
    s = scrape(rec)
    base = {"feature": "chat", "model": "gpt-4o", "step": "planning", "run": "r1"}
    assert series(s, "tallygate_tokens_total", direction="input", user="alice", **base) == 12_800
    assert series(s, "tallygate_tokens_total", direction="input", user="bob", **base) == 200
    assert series(s, "tallygate_requests_total", feature="chat", model="other",
                  outcome="rejected", user="carol", run="") == 1


async def test_budget_gauges_refresh_from_store() -> None:
    policy = _policy()
    rec = MetricsRecorder(policy, Catalog(policy.models))
    scopes = [key for key, _ in budget_scopes(policy)]
    # Only token limits that do not depend on the caller; request limits are not tokens.
    assert scopes == ["global:tokens:minute", "feature:review:tokens:day"]
    store = MemoryStore()
    now = 1_000_000.0
    hold = Hold("global:tokens:minute", 2_500, 10_000, Window.MINUTE, Metric.TOKENS)
    assert await store.reserve("x", [hold], lease=60, now=now) is None
    await store.settle("x", {"tokens": 1_500}, now=now)
    await rec.refresh(store, now)
    s = scrape(rec)
    g = "tallygate_budget_remaining_tokens"
    assert series(s, g, scope="global:tokens:minute") == 8_500
    assert series(s, g, scope="feature:review:tokens:day") == 5_000
    await rec.refresh(store, now + 60)  # the next minute: the window reset
    assert series(scrape(rec), g, scope="global:tokens:minute") == 10_000


def test_record_never_raises_on_odd_rows() -> None:
    policy = _policy()
    rec = MetricsRecorder(policy, Catalog(policy.models))
    rec.record(CallRecord("z", 0.0, Outcome.OK, 200, model_used="made-up-local-model",
                          input_tokens=10))
    rec.record(CallRecord("broken", 0.0, "not-an-outcome", 200))  # type: ignore[arg-type]
    s = scrape(rec)
    assert series(s, "tallygate_tokens_total", direction="input", feature="default",
                  model="made-up-local-model", step="none") == 10
    # An unknown model has no context window: no utilisation sample, no error.
    assert not names(s, "tallygate_context_utilization_ratio_count")


def test_grafana_dashboard_uses_exactly_the_exposed_names(recorder: MetricsRecorder) -> None:
    import asyncio
    import json
    import re
    from pathlib import Path

    asyncio.run(recorder.refresh(MemoryStore(), 1_000_000.0))
    exposed = {name for (name, _) in scrape(recorder)}
    dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana-dashboard.json")
                           .read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"tallygate_[a-z_]+", target["expr"])}
    assert used and used <= exposed, used - exposed
    bases = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert bases == {"tallygate_tokens_total", "tallygate_cost_usd_total",
                     "tallygate_requests_total", "tallygate_budget_remaining_tokens",
                     "tallygate_request_duration_seconds", "tallygate_upstream_duration_seconds",
                     "tallygate_context_utilization_ratio"}
