"""Prometheus metrics derived from finished calls (docs/observability.md). Names are stable.

`MetricsRecorder.record(row)` is on the request path: it keeps the row, and every 256
rows (or at a scrape) the batch is counted — dict arithmetic on integers and histogram
buckets, in memory. Counters are kept as exact integers
(tokens, nano-USD) and converted to the exposition value at scrape time. The remaining
budget gauges are refreshed from the state store by a background task (`refresh`).

Labels are low-cardinality by default: `feature` is a configured feature (or `default`)
else `other`; `step` a configured routing step, `none` when absent, else `other`;
`model` the resolved model, or the requested one when the catalog knows it, else
`other`. `user`, `run` and `key` labels are added to the counters only when
`metrics.high_cardinality_labels` lists them."""

from __future__ import annotations

import hashlib
import hmac
import logging
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tallygate.config import DEFAULT_FEATURE, Policy
from tallygate.core.catalog import Catalog
from tallygate.core.limits import escape_id
from tallygate.state.base import StateStore
from tallygate.types import NANO_PER_USD, CallRecord, Metric, Outcome

log = logging.getLogger("tallygate.metrics")

OTHER = "other"
NO_STEP = "none"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 0.99, 1.0)
DIRECTIONS = ("input", "output", "cached", "reasoning")
PENDING_ROWS = 256  # rows kept before they are counted (a scrape counts them at once)

Labels = tuple[str, ...]


class LabelPolicy:
    """Maps a row's attribution to bounded label values."""

    def __init__(self, policy: Policy, catalog: Catalog) -> None:
        self.features = frozenset({*policy.features, DEFAULT_FEATURE})
        self.steps = frozenset(policy.routing.steps)
        self.models = frozenset({*catalog.names(), *policy.models})
        self.extra: tuple[str, ...] = tuple(policy.metrics.high_cardinality_labels)

    def feature(self, row: CallRecord) -> str:
        name = row.feature or DEFAULT_FEATURE
        return name if name in self.features else OTHER

    def step(self, row: CallRecord) -> str:
        if row.step is None:
            return NO_STEP
        return row.step if row.step in self.steps else OTHER

    def model(self, row: CallRecord) -> str:
        if row.model_used is not None:
            return row.model_used
        name = row.model_requested
        return name if name is not None and name in self.models else OTHER

    def extras(self, row: CallRecord) -> Labels:
        if not self.extra:
            return ()
        values = {"user": row.user, "run": row.run, "key": row.key_id}
        return tuple(values[name] or "" for name in self.extra)


class _Counters(Collector):
    """Integer counters exposed as Prometheus counters (exact until scrape time)."""

    def __init__(self, extra: tuple[str, ...]) -> None:
        self.extra = extra
        self.tokens: defaultdict[Labels, int] = defaultdict(int)
        self.cost_nusd: defaultdict[Labels, int] = defaultdict(int)
        self.requests: defaultdict[Labels, int] = defaultdict(int)

    def collect(self) -> Iterator[CounterMetricFamily]:
        extra = list(self.extra)
        yield _family("tallygate_tokens", "Tokens by direction (input includes cached; "
                      "output includes reasoning).",
                      ["direction", "feature", "model", "step", *extra], self.tokens.items())
        cost = ((k, v / NANO_PER_USD) for k, v in self.cost_nusd.items())
        yield _family("tallygate_cost_usd", "Cost of calls in USD.",
                      ["feature", "model", *extra], cost)
        yield _family("tallygate_requests", "Calls by outcome "
                      "(ok, rejected, trimmed, cached, error).",
                      ["feature", "model", "outcome", *extra], self.requests.items())


class _Histogram(Collector):
    """Labelled histograms as plain integer lists (prometheus_client's take a lock and
    walk every bucket per observation; this is one bisect and two additions)."""

    def __init__(self, name: str, doc: str, labels: list[str],
                 buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.bounds = buckets
        self.le = [floatToGoString(b) for b in buckets] + ["+Inf"]
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        found = self.series.get(labels)
        if found is None:
            found = self.series[labels] = ([0] * (len(self.bounds) + 1), [0.0])
        found[0][bisect_left(self.bounds, value)] += 1
        found[1][0] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, (counts, total) in list(self.series.items()):
            family.add_metric(list(labels), list(zip(self.le, accumulate(counts),
                                                     strict=True)), total[0])
        yield family


def _family(name: str, doc: str, labels: list[str], items: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in list(items):
        family.add_metric(list(key), value)
    return family


class MetricsRecorder:
    """A `Recorder` that turns every CallRecord into Prometheus series."""

    def __init__(
        self, policy: Policy, catalog: Catalog, registry: CollectorRegistry | None = None
    ) -> None:
        self.policy = policy
        self.catalog = catalog
        self.labels = LabelPolicy(policy, catalog)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.counters = _Counters(self.labels.extra)
        self.registry.register(self.counters)
        self._windows: dict[str, int] = {}
        fm = ["feature", "model"]
        self.request_duration = _Histogram(
            "tallygate_request_duration_seconds", "Time from admission to the call's end.",
            fm, DURATION_BUCKETS)
        self.upstream_duration = _Histogram(
            "tallygate_upstream_duration_seconds",
            "Time spent on the provider for calls that reached it.", fm, DURATION_BUCKETS)
        self.context_utilization = _Histogram(
            "tallygate_context_utilization_ratio",
            "Input tokens divided by the model's context window.", ["model"], RATIO_BUCKETS)
        for histogram in (self.request_duration, self.upstream_duration,
                          self.context_utilization):
            self.registry.register(histogram)
        self.budget_remaining = Gauge(
            "tallygate_budget_remaining_tokens",
            "Tokens left in the current window of each configured limit "
            "(scope = the limit key, e.g. global:tokens:minute).",
            ["scope"], registry=self.registry)
        self._pending: list[CallRecord] = []

    def reload(self, policy: Policy, catalog: Catalog) -> None:
        """A reloaded policy's features, steps and budgets; the series keep counting."""
        self.policy = policy
        self.catalog = catalog
        self.labels = LabelPolicy(policy, catalog)

    # ------------------------------------------------------------------ hot path

    def record(self, row: CallRecord) -> None:
        """Keep the row; rows are counted in batches (PENDING_ROWS, or at a scrape)."""
        pending = self._pending
        pending.append(row)
        if len(pending) >= PENDING_ROWS:
            self.apply()

    def apply(self) -> None:
        """Count the rows recorded since the last batch (every read of the series
        calls this first)."""
        pending, self._pending = self._pending, []
        for row in pending:
            try:
                self._record(row)
            except Exception:  # a metrics bug must never fail the call being recorded
                log.exception("metrics: could not record row %s", row.request_id)

    def _record(self, row: CallRecord) -> None:
        lab = self.labels
        feature, model, step = lab.feature(row), lab.model(row), lab.step(row)
        extra = lab.extras(row)
        tokens = self.counters.tokens
        for direction, amount in (("input", row.input_tokens), ("output", row.output_tokens),
                                  ("cached", row.cached_tokens),
                                  ("reasoning", row.reasoning_tokens)):
            if amount:
                tokens[(direction, feature, model, step, *extra)] += amount
        self.counters.cost_nusd[(feature, model, *extra)] += row.cost_nusd
        self.counters.requests[(feature, model, row.outcome.value, *extra)] += 1
        fm = (feature, model)
        self.request_duration.observe(fm, row.latency_ms / 1000)
        if _reached_upstream(row):
            self.upstream_duration.observe(fm, _upstream_seconds(row))
            window = self._context_window(model)
            if window:
                self.context_utilization.observe((model,), row.input_tokens / window)

    def _context_window(self, model: str) -> int:
        window = self._windows.get(model)
        if window is None:
            try:
                window = self.catalog.get(model).context_window
            except Exception:  # an unknown model: no ratio rather than a failed record
                window = 0
            self._windows[model] = window
        return window

    # ------------------------------------------------------------------ background

    async def refresh(self, store: StateStore, now: float) -> None:
        """Set the remaining-budget gauge of every configured identity-free token limit."""
        for key, rule in budget_scopes(self.policy):
            used = await store.usage(key, limit=rule.amount, window=rule.window,
                                     rolling=rule.rolling, now=now)
            self.budget_remaining.labels(key).set(used.remaining)

    def exposition(self) -> bytes:
        self.apply()
        return generate_latest(self.registry)


def _reached_upstream(row: CallRecord) -> bool:
    return row.outcome not in (Outcome.REJECTED, Outcome.CACHED) and row.model_used is not None


def _upstream_seconds(row: CallRecord) -> float:
    """Provider time. The row carries the end-to-end latency; when the engine adds
    `"upstream_ms"` to the row's detail that figure is used instead."""
    detail = row.detail
    if detail and '"upstream_ms"' in detail:
        import orjson

        try:
            value = orjson.loads(detail).get("upstream_ms")
        except (orjson.JSONDecodeError, AttributeError):
            value = None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value / 1000
    return row.latency_ms / 1000


def budget_scopes(policy: Policy) -> list[tuple[str, Any]]:
    """(limit key, rule) of every token limit that does not depend on who calls:
    global, each configured feature, plan and model."""
    index = policy.limit_index
    groups: list[tuple[str, Any]] = [("global", index.global_)]
    groups += [(f"feature:{escape_id(n)}", r) for n, r in sorted(index.feature.items())]
    groups += [(f"plan:{escape_id(n)}", r) for n, r in sorted(index.plan.items())]
    groups += [(f"model:{escape_id(n)}", r) for n, r in sorted(index.model.items())]
    out = []
    for prefix, rules in groups:
        for rule in rules:
            if rule.metric is Metric.TOKENS:
                out.append((prefix + rule.key_suffix, rule))
    return out


_DENIED = (b'{"error":{"message":"GET /metrics needs Authorization: Bearer <metrics.token>.",'
           b'"type":"invalid_request_error","param":null,"code":"invalid_api_key"}}')


def metrics_route(recorder: MetricsRecorder, token: str | None = None) -> Route:
    """`GET /metrics` in the Prometheus text format; behind `token` when one is set
    (compared as digests, in constant time: the metrics show spend per feature)."""
    wanted = hashlib.sha256(token.encode()).digest() if token else None

    async def metrics(request: Request) -> Response:
        if wanted is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(digest, wanted):
                return Response(_DENIED, status_code=401, media_type="application/json",
                                headers={"www-authenticate": "Bearer"})
        return Response(recorder.exposition(), media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", metrics, methods=["GET"])

