"""The event-loop stall monitor (`server.loop_lag`, off by default).

A stall is how late a timer fires: while one callback holds the loop (a blocking call, a
long computation, a full garbage collection) every request waiting on the loop waits as
long. A timer due every `tick` (1 ms) measures it; the longest stall of each `interval`
is observed into the `tallygate_event_loop_stall_seconds` histogram, and stalls longer
than `log_above` are counted (`tallygate_event_loop_stalls_total`).

A late timer does not say whether one callback held the loop or a saturated loop ran
many short ones back to back (an iteration that serves 30 requests takes 10 ms with no
callback over 0.5 ms). With the `tallygate.loop_lag` logger at DEBUG the loop thread is
also sampled every `tick` while a beat is overdue, and each sample is attributed to the
callback running (its task, else the function the loop called): the longest run of
samples in one callback bounds that callback's time from below (less the time the
kernel kept the thread waiting for a core, on Linux: a preempted loop is no callback's
doing). Each interval's longest
such run is observed into `tallygate_event_loop_callback_seconds`, a stall in which one
callback ran longer than `log_above` is counted as `tallygate_event_loop_blocked_total`,
and each stall gets one log line: one callback named with its stack, or "busy: N
callbacks", or the garbage collection that lasted that long. The sampling runs only when
that log is on: the histogram alone costs one timer callback a millisecond.

uvloop's timers have millisecond resolution: stalls are measured to about 1 ms."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
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
        self.callbacks = Histogram(
            "tallygate_event_loop_callback_seconds",
            "Longest single callback seen in each interval (sampled at DEBUG only).",
            buckets=STALL_BUCKETS, registry=registry)
        self.blocked = Counter(
            "tallygate_event_loop_blocked",
            "Stalls in which one callback held the loop longer than log_above "
            "(sampled at DEBUG only).", registry=registry)
        self.worst = 0.0  # the longest stall of the interval so far
        self.longest = 0.0  # the longest since start (tests, benchmarks)
        self.worst_callback = 0.0  # the longest single callback seen this interval
        self.longest_callback = 0.0  # ... since start
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
        if self._sampler is not None:
            held = self._sampler.close_stall()
            if held > self.worst_callback:
                self.worst_callback = held
                self.longest_callback = max(self.longest_callback, held)
        if late > self.log_above:
            self.stalls.inc()
            if self._sampler is not None:
                self._sampler.report(late)
        if now >= self._window_end:
            self.histogram.observe(self.worst)
            self.worst = 0.0
            if self._sampler is not None:
                self.callbacks.observe(self.worst_callback)
                self.worst_callback = 0.0
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
        # The samples of the stall in progress: the callback of the last one, how many
        # in a row it has, the longest run (its length, its frame), distinct callbacks.
        self._last: object = None
        self._run_started = 0.0
        self._best = 0.0  # seconds between the first and last look of the longest run
        self._best_frame: FrameType | None = None
        self._run_frame: FrameType | None = None
        self._distinct: set[object] = set()
        self._held = 0.0  # the closed stall's longest single callback, seconds
        self._closed: tuple[int, FrameType | None] = (0, None)  # (distinct, its frame)
        self._schedstat: int | None = None
        self._in_alarm = False

    def start(self) -> None:
        """On the loop thread (its /proc entry is opened here)."""
        gc.callbacks.append(self._gc)
        try:
            self._schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._schedstat = None

    def stop(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._schedstat is not None:
            os.close(self._schedstat)
            self._schedstat = None

    def beat(self) -> None:
        """On the loop, at every beat on time."""

    def close_stall(self) -> float:
        """On the loop, at every beat: the longest single callback the samples since
        the previous beat saw (0 when none was sampled), in seconds; they start over.
        Consecutive looks in one callback: it ran at least from the first to the last."""
        self._closed = (len(self._distinct), self._best_frame)
        self._held = self._best
        self._last, self._best = None, 0.0
        self._best_frame = self._run_frame = None
        self._distinct.clear()
        return self._held

    def report(self, late: float) -> None:
        """On the loop: the stall that just ended, with what was seen running."""
        seen, self._seen = self._seen, None
        note, self._gc_note = self._gc_note, None
        (distinct, frame), held = self._closed, self._held
        if held > self.monitor.log_above:
            self.monitor.blocked.inc()
        if note is not None:
            what = note
        elif held > self.monitor.log_above:
            what = (f"one callback for at least {held * 1000:.0f} ms: "
                    + _describe(frame, self.loop))
        elif distinct > 1:
            what = (f"busy: {distinct} callbacks, none seen longer than "
                    f"{max(held, self.monitor.tick) * 1000:.0f} ms (a saturated loop)")
        else:
            what = seen or "(nothing caught: shorter than the sampler's look)"
        log.debug("event loop stalled %.1f ms; running: %s", late * 1000, what)

    def _keep(self, frame: FrameType | None) -> None:
        if self._seen is None:
            self._seen = _describe(frame, self.loop)

    def _sample(self, frame: FrameType | None) -> None:
        """One look at the loop thread (in the signal handler): whose callback runs."""
        who = _callback_of(frame, self.loop)
        # Time the thread held the loop: wall time less the time the kernel kept it
        # waiting for a core (a busy machine preempting it mid-step is no callback's).
        now = time.perf_counter() - self._queued()
        self._distinct.add(who if who is not None else object())
        if who is None or who is not self._last:  # (a look it cannot attribute starts
            self._last, self._run_started, self._run_frame = who, now, frame  # no run)
        elif now - self._run_started > self._best:
            self._best, self._best_frame = now - self._run_started, self._run_frame

    def _queued(self) -> float:
        """Seconds the loop thread has waited on the kernel's run queue (Linux; 0
        elsewhere)."""
        if self._schedstat is None:
            return 0.0
        try:
            return int(os.pread(self._schedstat, 64, 0).split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        if took > self.monitor.log_above / 2:
            self._gc_note = (f"garbage collection of generation {info.get('generation')} "
                             f"({took * 1000:.1f} ms, {info.get('collected', 0)} collected)")


class _SignalSampler(_Sampler):
    """A loop on the main thread: each beat arms a SIGALRM two ticks ahead, repeating
    every tick while the next beat is late; the handler runs on the loop thread itself,
    between two bytecodes of whatever holds it, and notes whose callback that is (and
    keeps the frame of the first look past `log_above`). (A thread could only look while
    the loop thread has let go of the GIL — in a system call — and would name those
    alone.)"""

    def start(self) -> None:
        super().start()
        self._previous = signal.signal(signal.SIGALRM, self._alarm)
        self.beat()

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)
        super().stop()

    def beat(self) -> None:
        tick = self.monitor.tick
        signal.setitimer(signal.ITIMER_REAL, 2 * tick, tick)

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        late = time.perf_counter() - self.monitor.due
        # (delivered late to an idle loop: nothing held it; or to this handler itself)
        if late < self.monitor.tick or self._in_alarm:
            return
        self._in_alarm = True
        try:
            self._sample(frame)
            if late > self.monitor.log_above:
                self._keep(frame)
        finally:
            self._in_alarm = False


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


_LOOP_FILES = ("/asyncio/", "/uvloop/", "/uvicorn/server.py", "/uvicorn/_compat.py")


def _callback_of(frame: FrameType | None, loop: asyncio.AbstractEventLoop) -> object:
    """Whose callback the loop thread runs: its task, else the code of the outermost
    frame below the loop's own (the function the loop called: two calls of one plain
    callback function in a row look like one; the gateway's work runs in tasks)."""
    current = getattr(asyncio.tasks, "_current_tasks", {}).get(loop)
    if current is not None:
        return current
    entry = None
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in _LOOP_FILES):
            break
        entry = frame.f_code
        frame = frame.f_back
    return entry


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
