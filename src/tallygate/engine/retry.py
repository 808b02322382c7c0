"""Upstream retry policy: exponential back-off with full jitter, honouring the
upstream's retry-after / retry-after-ms, bounded by the feature's `retries` and the
client's deadline.

The client's own retries: the Stainless SDKs (openai, anthropic) send
`x-stainless-retry-count` (0 on the first try, n on their n-th retry) and
`x-stainless-timeout` (their per-request timeout, seconds); the gateway reads them into
the call's context (`client_retries`, `client_timeout`), and the library sets
`client_retries` because the wrapped SDK retries on its own. When the client retries,
tallygate does not retry inside as well (no retries × retries amplification against a
struggling upstream); it still recovers from context-length errors and tries
fallbacks, which the SDK cannot do. Retries only happen before any byte went to the
client.

The deadline is the client's own timeout when known, else (1 + retries) provider
timeouts; each try's own timeout is the provider's, cut to what is left of the deadline,
and a wait (back-off or retry-after) that would end past the deadline is not started."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

DEFAULT_BASE_DELAY = 0.5  # seconds: first back-off ceiling, doubled each retry
DEFAULT_MAX_DELAY = 8.0  # seconds: back-off ceiling (retry-after may ask for more)


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Process-wide knobs; tests inject `rand`, `sleep` and tiny delays."""

    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    rand: Callable[[], float] = random.random
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic


def backoff_delay(attempt: int, *, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(cap, base · 2^attempt)]."""
    ceiling = min(cap, base * (2 ** max(0, attempt)))
    return max(0.0, rand() * ceiling)


def client_retry_count(headers: Mapping[str, str]) -> int:
    try:
        return max(0, int(headers.get("x-stainless-retry-count", "0")))
    except ValueError:
        return 0


def client_timeout(headers: Mapping[str, str]) -> float | None:
    """The SDK's per-request timeout in seconds, when it told us."""
    raw = headers.get("x-stainless-timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value > 0 else None


@dataclass(slots=True)
class RetryPlan:
    """The retry budget of one call: how many retries remain and by when it must end."""

    settings: RetrySettings
    max_retries: int
    deadline: float  # settings.clock() value past which nothing new is started
    used: int = 0
    waited: list[float] = field(default_factory=list)

    @classmethod
    def for_call(
        cls,
        settings: RetrySettings,
        *,
        feature_retries: int,
        client_retries: int,
        client_timeout: float | None,
        provider_timeout: float,
    ) -> RetryPlan:
        budget = feature_retries if client_retries == 0 else 0
        # The client's own timeout when it sent one (it gives up then anyway); else
        # every try may use a whole provider timeout.
        total = client_timeout if client_timeout is not None else provider_timeout * (budget + 1)
        return cls(settings, budget, settings.clock() + total)

    def remaining_time(self) -> float:
        return max(0.0, self.deadline - self.settings.clock())

    def next_delay(self, retry_after: float | None) -> float | None:
        """Seconds to wait before the next retry, or None: give up (budget spent, or
        the wait would run past the deadline)."""
        if self.used >= self.max_retries:
            return None
        if retry_after is not None:
            delay = max(0.0, retry_after)
        else:
            delay = backoff_delay(self.used, base=self.settings.base_delay,
                                  cap=self.settings.max_delay, rand=self.settings.rand)
        if delay >= self.remaining_time():
            return None
        return delay

    async def wait(self, delay: float) -> None:
        self.used += 1
        self.waited.append(delay)
        await self.settings.sleep(delay)
