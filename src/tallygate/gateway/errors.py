"""The one place errors become HTTP: status, body in the protocol's own format, headers."""

from __future__ import annotations

from tallygate.core.decide import ratelimit_headers
from tallygate.errors import LimitError, TallygateError, UpstreamError
from tallygate.providers import anthropic as anthropic_wire
from tallygate.providers import openai as openai_wire
from tallygate.types import LimitUsage


def render_error(
    exc: TallygateError, protocol: str, *, request_id: str, now: float
) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = [("x-tallygate-request-id", request_id)]
    if isinstance(exc, UpstreamError) and exc.body:
        # The upstream's own status, body and relevant headers, untouched.
        headers += [(k, v) for k, v in exc.headers.items() if k != "content-length"]
        return exc.upstream_status, exc.body, headers
    if protocol == "anthropic":
        body = anthropic_wire.error_body(
            exc.code, exc.message, type=exc.anthropic_type, param=exc.param,
            request_id=request_id,
        )
    else:
        body = openai_wire.error_body(exc.code, exc.message, type=exc.openai_type,
                                      param=exc.param)
    if isinstance(exc, LimitError) and exc.retry_after is not None:
        headers += _limit_headers(exc, now)
    elif isinstance(exc, LimitError) and exc.details.get("should_retry") is False:
        # No wait clears it (a run's lifetime budget, the loop cap): SDKs must not retry.
        headers.append(("x-should-retry", "false"))
    status = exc.upstream_status if isinstance(exc, UpstreamError) else exc.status
    return status, body, headers


def _limit_headers(exc: LimitError, now: float) -> list[tuple[str, str]]:
    reset_at = float(exc.details.get("reset_at", now + (exc.retry_after or 1)))
    usage = LimitUsage(exc.limit_key, exc.limit, exc.used, 0, reset_at)
    out = list(ratelimit_headers([usage], now).items())
    out.append(("retry-after", str(int(exc.retry_after or 1))))
    if not exc.details.get("should_retry", True):
        out.append(("x-should-retry", "false"))
    return out
