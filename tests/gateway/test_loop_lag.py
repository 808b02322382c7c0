"""The event-loop stall monitor: a callback that holds the loop shows in the histogram,
the counter and (at DEBUG) a log line naming the function that held it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from tallygate.config.models import PolicyModel
from tallygate.observe.loop_lag import LoopLagMonitor


def hold_the_loop(seconds: float) -> None:
    """Compute for `seconds` of the thread's own CPU time (as long on a busy machine)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:  # Python code: the sampler sees this frame
        pass


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def run_monitor(registry: CollectorRegistry, stall: float) -> LoopLagMonitor:
    monitor = LoopLagMonitor(registry, interval=0.05, log_above=0.005)
    monitor.start()
    try:
        await asyncio.sleep(0.06)
        asyncio.get_running_loop().call_soon(hold_the_loop, stall)
        await asyncio.sleep(0.12)  # the stall, then the end of its interval
    finally:
        monitor.stop()
    return monitor


async def test_a_stall_is_observed_counted_and_named(caplog: pytest.LogCaptureFixture
                                                     ) -> None:
    registry = CollectorRegistry()
    with caplog.at_level(logging.DEBUG, logger="tallygate.loop_lag"):
        monitor = await run_monitor(registry, 0.04)
    assert monitor.longest >= 0.035
    assert sample(registry, "tallygate_event_loop_stalls_total") >= 1
    # The interval holding the stall was observed above 25 ms, the quiet ones below.
    assert sample(registry, "tallygate_event_loop_stall_seconds_count") >= 2
    over = (sample(registry, "tallygate_event_loop_stall_seconds_count")
            - sample(registry, "tallygate_event_loop_stall_seconds_bucket", le="0.025"))
    assert over == 1
    lines = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert any("hold_the_loop" in line for line in lines), lines


async def test_without_debug_nothing_is_sampled(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger="tallygate.loop_lag"):
        monitor = await run_monitor(registry, 0.02)
    assert monitor.longest >= 0.015
    assert sample(registry, "tallygate_event_loop_stalls_total") >= 1
    assert not [r for r in caplog.records if "stalled" in r.getMessage()]


def test_a_loop_on_another_thread_is_named_by_the_watchdog(
        caplog: pytest.LogCaptureFixture) -> None:
    """Signals reach the main thread only: elsewhere a watchdog thread looks, and it
    sees the loop thread whenever that one lets go of the GIL (here: sleeping)."""
    registry = CollectorRegistry()

    def sleeper() -> None:
        time.sleep(0.04)

    async def main() -> None:
        monitor = LoopLagMonitor(registry, interval=0.05, log_above=0.005)
        monitor.start()
        await asyncio.sleep(0.03)
        asyncio.get_running_loop().call_soon(sleeper)
        await asyncio.sleep(0.1)
        monitor.stop()

    with caplog.at_level(logging.DEBUG, logger="tallygate.loop_lag"):
        thread = threading.Thread(target=lambda: asyncio.run(main()))
        thread.start()
        thread.join()
    lines = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert any("sleeper" in line for line in lines), lines


def test_the_monitor_is_off_by_default_and_typos_are_named() -> None:
    assert PolicyModel().server.loop_lag.enabled is False
    on = PolicyModel.model_validate({"server": {"loop_lag": {"enabled": True,
                                                             "log_above": "10ms"}}})
    assert on.server.loop_lag.log_above == pytest.approx(0.01)
    with pytest.raises(ValueError, match="log_abvoe"):
        PolicyModel.model_validate({"server": {"loop_lag": {"log_abvoe": "10ms"}}})


async def busy_tasks(tasks: int, steps: int, step: float) -> None:
    """A saturated loop: many tasks, each holding the loop briefly at every step."""

    async def one() -> None:
        for _ in range(steps):
            hold_the_loop(step)
            await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(tasks)))


async def test_one_callback_holding_the_loop_is_told_from_a_saturated_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    """A 40 ms callback: counted as blocked, its length bounded from below, named. Then
    60 tasks taking turns of 0.3 ms (the loop just as late, for as long): a busy loop,
    no callback seen longer than a couple of ticks, nothing counted as blocked."""
    registry = CollectorRegistry()
    with caplog.at_level(logging.DEBUG, logger="tallygate.loop_lag"):
        monitor = await run_monitor(registry, 0.04)
        blocked = sample(registry, "tallygate_event_loop_blocked_total")
        single = monitor.longest_callback
        caplog.clear()
        busy_registry = CollectorRegistry()
        busy = LoopLagMonitor(busy_registry, interval=0.05, log_above=0.005)
        busy.start()
        try:
            await asyncio.sleep(0.01)
            await busy_tasks(60, 4, 0.0003)
        finally:
            busy.stop()
    assert blocked == 1
    assert single >= 0.025  # (a lower bound: the looks that found it, first to last)
    assert sample(registry, "tallygate_event_loop_callback_seconds_count") >= 2
    assert busy.longest >= 0.01  # as late as a blocked loop ...
    lines = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    told_busy = [line for line in lines if "busy:" in line]
    told_one = [line for line in lines if "one callback" in line]
    # ... but told apart: (a busy machine may preempt the loop inside one task's turn,
    # which then looks like that callback holding it, so not every line need say busy)
    assert len(told_busy) > 2 * len(told_one), lines
    assert sample(busy_registry, "tallygate_event_loop_blocked_total") == len(told_one)
