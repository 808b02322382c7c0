"""Run-time flag polls: while calls keep coming a due poll runs beside the call that
found it due, so a slow store delays a flag change, never a request; the first read and
the first call after a quiet spell wait for it, so a change made meanwhile applies."""

from __future__ import annotations

import asyncio

from tallygate.engine.flags import FlagView


class SlowFlags:
    """A store whose flag reads wait until `gate` opens (after the first read)."""

    def __init__(self) -> None:
        self.version = 1
        self.flags_now = {"chat": True}
        self.gate = asyncio.Event()
        self.reads = 0

    async def flags_version(self) -> int:
        self.reads += 1
        if self.reads > 1:
            await self.gate.wait()
        return self.version

    async def flags(self) -> dict[str, bool]:
        return dict(self.flags_now)


async def test_a_slow_poll_never_holds_a_call() -> None:
    store = SlowFlags()
    now = [0.0]
    view = FlagView(store, {}, clock=lambda: now[0], refresh=0.5)  # type: ignore[arg-type]
    assert await view.enabled("chat") is True  # the first read: waited for
    store.version, store.flags_now = 2, {"chat": False}  # switched off elsewhere
    now[0] = 0.6  # a poll is due (calls keep coming), and the store is slow
    answered = await asyncio.wait_for(view.enabled("chat"), 0.5)
    assert answered is True  # the flags as they were: the call did not wait
    assert await asyncio.wait_for(view.enabled("chat"), 0.5) is True  # one poll at a time
    assert store.reads == 2
    store.gate.set()  # the poll returns: the change applies from the next call
    for _ in range(10):
        await asyncio.sleep(0)
    assert await view.enabled("chat") is False


async def test_a_failed_poll_keeps_the_flags_it_had() -> None:
    store = SlowFlags()
    now = [0.0]
    view = FlagView(store, {}, clock=lambda: now[0], refresh=0.5)  # type: ignore[arg-type]
    assert await view.enabled("chat") is True

    async def broken() -> int:
        raise ConnectionError("store down")

    store.flags_version = broken  # type: ignore[method-assign]
    now[0] = 0.6
    assert await view.enabled("chat") is True
    for _ in range(10):
        await asyncio.sleep(0)
    now[0] = 1.2  # the next poll is tried again
    assert await view.enabled("chat") is True


async def test_after_a_quiet_spell_the_call_waits_for_the_poll() -> None:
    store = SlowFlags()
    store.gate.set()  # a store that answers
    now = [0.0]
    view = FlagView(store, {}, clock=lambda: now[0], refresh=0.5)  # type: ignore[arg-type]
    assert await view.enabled("chat") is True
    store.version, store.flags_now = 2, {"chat": False}  # switched off during a lull
    now[0] = 30.0  # no call for a while: this one sees the change itself
    assert await view.enabled("chat") is False
