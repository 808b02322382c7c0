"""The one place errors become HTTP: status, body in the protocol's own format, headers."""

from __future__ import annotations

from tallygate.core.decide import ratelimit_headers
from tallygate.errors import LimitError, TallygateError, UpstreamError
from tallygate.providers.base import QUOTA_TYPE, adapter_for
from tallygate.types import LimitUsage


def render_error(
    exc: TallygateError, protocol: str, *, request_id: str, now: float
) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = [("x-tallygate-request-id", request_id)]
    if isinstance(exc, UpstreamError) and exc.body:
        # The upstream's own status, body and relevant headers, untouched.
        headers += [(k, v) for k, v in exc.headers.items() if k != "content-length"]
        return exc.upstream_status, exc.body, headers
    body = adapter_for(protocol).refusal_body(exc, request_id=request_id, final=is_final(exc))
    if isinstance(exc, LimitError) and exc.retry_after is not None:
        headers += _limit_headers(exc, now)
    elif isinstance(exc, LimitError) and exc.details.get("should_retry") is False:
        # No wait clears it (a run's lifetime budget, the loop cap): SDKs must not retry.
        headers.append(("x-should-retry", "false"))
    status = exc.upstream_status if isinstance(exc, UpstreamError) else exc.status
    return status, body, headers


__all__ = ["QUOTA_TYPE", "is_final", "render_error"]


def is_final(exc: TallygateError) -> bool:
    """A limit refusal that retrying before the reset cannot clear (decide.denial_to_error
    sets `should_retry`): the reset is far away, or the call alone exceeds the limit."""
    return (isinstance(exc, LimitError) and exc.status == 429
            and exc.details.get("should_retry", True) is False)


def _limit_headers(exc: LimitError, now: float) -> list[tuple[str, str]]:
    """x-ratelimit-* always (the reset stays visible); Retry-After only when the refusal
    clears soon: a final one carries `x-should-retry: false` instead, since clients that
    honour Retry-After (Codex among them) would sleep until a reset hours away."""
    reset_at = float(exc.details.get("reset_at", now + (exc.retry_after or 1)))
    usage = LimitUsage(exc.limit_key, exc.limit, exc.used, 0, reset_at)
    out = list(ratelimit_headers([usage], now).items())
    if is_final(exc):
        out.append(("x-should-retry", "false"))
    else:
        out.append(("retry-after", str(int(exc.retry_after or 1))))
    return out
