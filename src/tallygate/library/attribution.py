"""Who a governed call is charged to and how it is labelled: the arguments given to
`gov.openai(...)` / `gov.anthropic(...)`, with the gaps filled from `gov.run()` and
`gov.step()`, which live in context variables (they follow asyncio tasks and threads
started with `contextvars.copy_context()`)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypedDict

_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("tallygate_run", default=None)
_STEP: contextvars.ContextVar[tuple[str, int | None] | None] = contextvars.ContextVar(
    "tallygate_step", default=None
)


class Labels(TypedDict, total=False):
    """The keyword arguments of `gov.openai(client, …)` and `gov.anthropic(client, …)`."""

    feature: str | None
    user: str | None
    plan: str | None
    run: str | None
    step: str | None
    attempt: int | None


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a wrapped client's calls are charged to and how they are labelled."""

    feature: str | None = None
    user: str | None = None
    plan: str | None = None
    run: str | None = None
    step: str | None = None
    attempt: int | None = None

    def resolved(self) -> Attribution:
        """These arguments, with the gaps filled from `gov.run()` / `gov.step()`."""
        step = self.step
        attempt = self.attempt
        active = _STEP.get()
        if active is not None:
            if step is None:
                step = active[0]
            if attempt is None and step == active[0]:
                attempt = active[1]
        run = self.run if self.run is not None else _RUN.get()
        return Attribution(self.feature, self.user, self.plan, run, step, attempt)


@contextmanager
def run_scope(run_id: str) -> Iterator[None]:
    """Calls in the block belong to run `run_id` (already validated)."""
    token = _RUN.set(run_id)
    try:
        yield
    finally:
        _RUN.reset(token)


@contextmanager
def step_scope(name: str, attempt: int | None) -> Iterator[None]:
    """Calls in the block belong to step `name`, loop number `attempt` (validated)."""
    token = _STEP.set((name, attempt))
    try:
        yield
    finally:
        _STEP.reset(token)
