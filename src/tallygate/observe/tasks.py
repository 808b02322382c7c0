"""Stopping the background loops (alerts, webhooks, policy reload, observers)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | asyncio.Future[Any] | None) -> None:
    """Cancel a background loop and wait until it has stopped; the CancelledError it ends
    with is the one asked for, so it is not raised here."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
