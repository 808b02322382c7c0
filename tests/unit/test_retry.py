"""Back-off arithmetic and the retry plan (pure; time and randomness injected)."""

from __future__ import annotations

from tallygate.engine.retry import (
    RetryPlan,
    RetrySettings,
    backoff_delay,
    client_retry_count,
    client_timeout,
)


def _settings(now: list[float], rand: float = 1.0) -> RetrySettings:
    return RetrySettings(base_delay=0.5, max_delay=4.0, rand=lambda: rand, clock=lambda: now[0])


def test_full_jitter_ceiling_doubles_up_to_the_cap() -> None:
    ceilings = [backoff_delay(a, base=0.5, cap=4.0, rand=lambda: 1.0) for a in range(6)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_delay(3, base=0.5, cap=4.0, rand=lambda: 0.0) == 0.0


def test_budget_and_retry_after() -> None:
    now = [0.0]
    plan = RetryPlan.for_call(_settings(now), feature_retries=2, client_retries=0,
                              client_timeout=None, provider_timeout=10.0)
    assert plan.deadline == 30.0  # three tries of one provider timeout each
    assert plan.next_delay(3.0) == 3.0  # retry-after wins over the back-off
    plan.used = 2
    assert plan.next_delay(None) is None


def test_client_deadline_and_retry_count() -> None:
    now = [0.0]
    headers = {"x-stainless-timeout": "2", "x-stainless-retry-count": "0"}
    plan = RetryPlan.for_call(_settings(now), feature_retries=3,
                              client_retries=client_retry_count(headers),
                              client_timeout=client_timeout(headers), provider_timeout=60.0)
    assert plan.next_delay(5.0) is None  # would end past the client's 2 s
    now[0] = 1.8
    assert plan.next_delay(None) is None  # 0.5 s back-off > 0.2 s left
    retrying = RetryPlan.for_call(
        _settings(now), feature_retries=3, provider_timeout=60.0, client_timeout=None,
        client_retries=client_retry_count({"x-stainless-retry-count": "1"}))
    assert retrying.max_retries == 0
