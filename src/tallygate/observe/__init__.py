"""Live observability: Prometheus metrics, OpenTelemetry traces and alert webhooks, all
derived from the CallRecords the engine hands to its recorders.

The gateway calls `install(runtime, policy)` in its start-up and `await obs.close()` in its
shut-down. Only O(1) in-memory work happens per call; the state-store reads, ledger
queries, span exports and webhook POSTs run in background tasks. OpenTelemetry is
imported only when tracing is configured."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.routing import Route

from tallygate.extras import needs
from tallygate.observe.metrics import MetricsRecorder, metrics_route
from tallygate.observe.tasks import cancel_and_wait

if TYPE_CHECKING:
    from tallygate.config import Policy
    from tallygate.observe.alert_log import AlertLog
    from tallygate.observe.alerts import AlertEngine
    from tallygate.observe.loop_lag import LoopLagMonitor
    from tallygate.observe.tracing import TracingRecorder
    from tallygate.observe.webhooks import Poster
    from tallygate.runtime import Runtime

log = logging.getLogger("tallygate.observe")

__all__ = ["MetricsRecorder", "Observability", "install", "metrics_route", "tracing_options"]

REFRESH_SECONDS = 5.0


@dataclass
class Observability:
    """What `install` set up; `close()` stops the background work it started."""

    metrics: MetricsRecorder
    routes: list[Route]
    tracing: TracingRecorder | None = None
    alerts: AlertEngine | None = None
    alert_log: AlertLog | None = None  # where fired alerts are kept (the dashboard's page)
    loop_lag: LoopLagMonitor | None = None  # server.loop_lag
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def reload(self, runtime: Runtime, policy: Policy) -> None:
        """A reloaded policy: the metrics relabel, the alert rules are replaced."""
        self.metrics.reload(policy, runtime.catalog)
        if self.alerts is not None:
            await self.alerts.stop()
            runtime.recorders.recorders.remove(self.alerts)
            self.alerts = None
        if policy.alerts:
            self.alerts = _alert_engine(runtime, policy, None, time.time, 5.0,
                                        self.alert_log)
            runtime.recorders.recorders.append(self.alerts)
            self.alerts.start()

    async def close(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        if self.loop_lag is not None:
            self.loop_lag.stop()
        if self.alerts is not None:
            await self.alerts.stop()
        if self.tracing is not None:
            self.tracing.close()


def tracing_options(policy: Policy) -> dict[str, Any]:
    """The policy's `tracing` section when the config model has one (exporter,
    endpoint, service_name), else tracing off."""
    section = getattr(policy, "tracing", None)
    if section is None:
        return {"exporter": "none"}
    if hasattr(section, "model_dump"):
        section = section.model_dump()
    return {k: v for k, v in dict(section).items() if v is not None}


def install(
    runtime: Runtime,
    policy: Policy,
    *,
    tracer_provider: Any = None,
    poster: Poster | None = None,
    clock: Callable[[], float] = time.time,
    refresh_seconds: float = REFRESH_SECONDS,
    alert_interval: float = 5.0,
    alert_log: AlertLog | None = None,
) -> Observability:
    """Add the metrics (always), tracing (when configured or a provider is given) and
    alert (when rules exist) recorders to the runtime and start their background tasks.
    Call from a running event loop; returns the `/metrics` route in `routes`. Fired
    alerts are kept in `alert_log` when given (the dashboard's alerts page)."""
    metrics = MetricsRecorder(policy, runtime.catalog)
    token = policy.metrics.token.get_secret_value() if policy.metrics.token else None
    obs = Observability(metrics, [metrics_route(metrics, token)], alert_log=alert_log)
    runtime.recorders.recorders.append(metrics)
    options = tracing_options(policy)
    if tracer_provider is not None or options.get("exporter", "none") != "none":
        with needs("otel", "tracing"):
            from tallygate.observe.tracing import TracingRecorder  # OTel loads only here

        obs.tracing = TracingRecorder(
            tracer_provider, exporter=options.get("exporter", "console"),
            endpoint=options.get("endpoint"),
            service_name=options.get("service_name", "tallygate"))
        runtime.recorders.recorders.append(obs.tracing)
    if policy.alerts:
        obs.alerts = _alert_engine(runtime, policy, poster, clock, alert_interval, alert_log)
        runtime.recorders.recorders.append(obs.alerts)
        obs.alerts.start()
    lag = policy.server.loop_lag
    if lag.enabled:
        from tallygate.observe.loop_lag import LoopLagMonitor

        obs.loop_lag = LoopLagMonitor(metrics.registry, interval=lag.interval,
                                      log_above=lag.log_above)
        obs.loop_lag.start()
    obs._tasks.append(asyncio.create_task(
        _refresh_loop(obs, runtime, clock, refresh_seconds), name="tallygate-metrics"))
    return obs


def _alert_engine(runtime: Runtime, policy: Policy, poster: Poster | None,
                  clock: Callable[[], float], interval: float,
                  log: AlertLog | None = None) -> AlertEngine:
    from tallygate.observe.alerts import AlertEngine
    from tallygate.observe.figures import LedgerFigures

    return AlertEngine(policy.alerts, runtime.store, LedgerFigures(runtime.ledger),
                       policy=policy, catalog=runtime.catalog, clock=clock, poster=poster,
                       interval=interval, keys=runtime.keys, log=log)


async def _refresh_loop(obs: Observability, runtime: Runtime, clock: Callable[[], float],
                        every: float) -> None:
    while True:
        try:
            await obs.metrics.refresh(runtime.store, clock())
            if obs.tracing is not None:
                obs.tracing.flush(clock())
        except Exception:  # a store outage: the gauges keep their last value
            log.warning("metrics refresh failed", exc_info=True)
        await asyncio.sleep(every)
