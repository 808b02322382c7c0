"""The event-loop stall monitor (`server.loop_lag`, off by default).

A stall is how late a timer fires: while one callback holds the loop (a blocking call, a
long computation, a full garbage collection) every request waiting on the loop waits as
long. A timer due every `tick` (1 ms) measures it; the longest stall of each `interval`
is observed into the `tallygate_event_loop_stall_seconds` histogram, and stalls longer
than `log_above` are counted (`tallygate_event_loop_stalls_total`).

With the `tallygate.loop_lag` logger at DEBUG, each such stall also gets one log line
naming what ran: the stack the loop thread was in while the timer was overdue (and the
task it belongs to), or the garbage collection that lasted that long. The sampling runs
only when that log is on: the histogram alone costs one timer callback a millisecond.

uvloop's timers have millisecond resolution: stalls are measured to about 1 ms."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
import time
import traceback
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("tallygate.loop_lag")
STALL_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TICK = 0.001
STACK_FRAMES = 8  # innermost frames kept in a stall's log line


class LoopLagMonitor:
    """Start it on the loop it watches (`start()` from a coroutine); `stop()` ends it."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 interval: float = 1.0, log_above: float = 0.005,
                 tick: float = TICK) -> None:
        self.interval = interval
        self.log_above = log_above
        self.tick = tick
        self.histogram = Histogram(
            "tallygate_event_loop_stall_seconds",
            "Longest event-loop stall (how late a 1 ms timer fired) in each interval.",
            buckets=STALL_BUCKETS, registry=registry)
        self.stalls = Counter(
            "tallygate_event_loop_stalls",
            "Event-loop stalls longer than server.loop_lag.log_above.", registry=registry)
        self.worst = 0.0  # the longest stall of the interval so far
        self.longest = 0.0  # the longest since start (tests, benchmarks)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._window_end = 0.0
        self._sampler: _Sampler | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        now = time.perf_counter()
        self._window_end = now + self.interval
        self._due = now + self.tick
        self._timer = self._loop.call_later(self.tick, self._beat)
        if log.isEnabledFor(logging.DEBUG):
            main = threading.current_thread() is threading.main_thread()
            self._sampler = (_SignalSampler if main else _ThreadSampler)(self._loop, self)
            self._sampler.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None

    def _beat(self) -> None:
        now = time.perf_counter()
        late = now - self._due
        if late > self.worst:
            self.worst = late
            self.longest = max(self.longest, late)
        if late > self.log_above:
            self.stalls.inc()
            if self._sampler is not None:
                self._sampler.report(late)
        if now >= self._window_end:
            self.histogram.observe(self.worst)
            self.worst = 0.0
            self._window_end = now + self.interval
        self._due = now + self.tick
        if self._sampler is not None:
            self._sampler.beat()
        assert self._loop is not None
        self._timer = self._loop.call_later(self.tick, self._beat)

    @property
    def due(self) -> float:
        """When the next beat should run (perf_counter); the watchdog compares."""
        return self._due


class _Sampler:
    """What the loop thread ran during a stall, and long garbage collections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, monitor: LoopLagMonitor) -> None:
        self.loop = loop
        self.monitor = monitor
        self._seen: str | None = None  # what the loop was running during this stall
        self._gc_started = 0.0
        self._gc_note: str | None = None

    def start(self) -> None:
        gc.callbacks.append(self._gc)

    def stop(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)

    def beat(self) -> None:
        """On the loop, at every beat on time."""

    def report(self, late: float) -> None:
        """On the loop: the stall that just ended, with what was seen running."""
        seen, self._seen = self._seen, None
        note, self._gc_note = self._gc_note, None
        what = note or seen or "(nothing caught: shorter than the sampler's look)"
        log.debug("event loop stalled %.1f ms; running: %s", late * 1000, what)

    def _keep(self, frame: FrameType | None) -> None:
        if self._seen is None:
            self._seen = _describe(frame, self.loop)

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        if took > self.monitor.log_above / 2:
            self._gc_note = (f"garbage collection of generation {info.get('generation')} "
                             f"({took * 1000:.1f} ms, {info.get('collected', 0)} collected)")


class _SignalSampler(_Sampler):
    """A loop on the main thread: each beat arms a one-shot SIGALRM for `log_above`
    ahead; when the next beat is that late the signal's handler runs on the loop thread
    itself, between two bytecodes of whatever holds it, and keeps that frame. (A thread
    could only look while the loop thread has let go of the GIL — in a system call —
    and would name those alone.)"""

    def start(self) -> None:
        super().start()
        self._previous = signal.signal(signal.SIGALRM, self._alarm)
        self.beat()

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)
        super().stop()

    def beat(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, self.monitor.log_above + self.monitor.tick)

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        self._keep(frame)


class _ThreadSampler(_Sampler):
    """A loop on another thread (signals reach the main thread only): a watchdog thread
    looks whenever the beat is overdue. It can only look while the loop thread has let
    go of the GIL, so it tends to name system calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, monitor: LoopLagMonitor) -> None:
        super().__init__(loop, monitor)
        self.loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tg-loop-lag", daemon=True)

    def start(self) -> None:
        super().start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        super().stop()

    def _watch(self) -> None:
        every = max(0.001, self.monitor.log_above / 2)
        while not self._stop.wait(every):
            if time.perf_counter() - self.monitor.due > self.monitor.log_above:
                self._keep(sys._current_frames().get(self.loop_thread))


def _describe(frame: FrameType | None, loop: asyncio.AbstractEventLoop) -> str:
    if frame is None:
        return "(no frame)"
    stack = traceback.extract_stack(frame)[-STACK_FRAMES:]
    where = " <- ".join(f"{f.name} ({_short(f.filename)}:{f.lineno})"
                        for f in reversed(stack))
    task = _running_task(loop)
    return f"{where}{f' in task {task}' if task else ''}"


def _running_task(loop: asyncio.AbstractEventLoop) -> str | None:
    current = getattr(asyncio.tasks, "_current_tasks", {}).get(loop)
    if current is None:
        return None
    coro = current.get_coro()
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    return f"{current.get_name()} ({name})"


def _short(path: str) -> str:
    for marker in ("/tallygate/", "/site-packages/", "/lib/python"):
        at = path.rfind(marker)
        if at >= 0:
            return path[at + 1:]
    return path
