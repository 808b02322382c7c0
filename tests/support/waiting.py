"""Waiting for something another thread or process does, without fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], *, timeout: float = 10.0, every: float = 0.02) -> T:
    """`check()`'s first truthy value, polled until `timeout` (AssertionError then, with
    the last value): for what a background task, thread or process makes true."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > end:
            assert value, f"still {value!r} after {timeout} s"
            return value
        time.sleep(every)


async def eventually_async(check: Callable[[], Awaitable[T]], *, timeout: float = 10.0,
                           every: float = 0.01) -> T:
    """`eventually` for a coroutine check, awaited on the running loop."""
    end = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > end:
            assert value, f"still {value!r} after {timeout} s"
            return value
        await asyncio.sleep(every)
