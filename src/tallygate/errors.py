"""One exception tree. Each error knows its HTTP status and wire code; only the
gateway turns them into HTTP responses (in the protocol's own format)."""

from __future__ import annotations

import functools
import sqlite3
from typing import Any, ClassVar


class TallygateError(Exception):
    """Root of every error tallygate raises on purpose."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid_request"
    # OpenAI error "type" and Anthropic error "type" for this error.
    openai_type: ClassVar[str] = "invalid_request_error"
    anthropic_type: ClassVar[str] = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details: dict[str, Any] = details


class ConfigError(TallygateError):
    """The policy file or an override is invalid."""

    code = "invalid_config"


class SecretNotSet(ConfigError):
    """A secret the policy reads from the environment (`api_key: ${OPENAI_API_KEY}`) is
    needed now and its variable is not set. The message names the variable, never a
    value. The caller did nothing wrong: on the wire it is a server error."""

    status = 500
    code = "secret_not_set"
    openai_type = "server_error"
    anthropic_type = "api_error"


class InvalidRequest(TallygateError):
    """Malformed JSON, wrong types, missing fields."""


class RequestTooLarge(TallygateError):
    status = 413
    code = "request_too_large"
    anthropic_type = "request_too_large"


class InputTooLarge(RequestTooLarge):
    """Text handed to the counter is past the configured size cap."""


class UnknownModel(TallygateError):
    status = 400
    code = "model_not_found"
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"

    def __init__(self, model: str, suggestions: list[str] | None = None) -> None:
        self.model = model
        self.suggestions = list(suggestions or [])
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"Unknown model {model!r}.{hint}", param="model")


class InvalidApiKey(TallygateError):
    status = 401
    code = "invalid_api_key"
    anthropic_type = "authentication_error"


class KeyExpired(InvalidApiKey):
    """A virtual key past its `expires_at`: 401, told apart from an unknown key."""

    code = "key_expired"


class PermissionDenied(TallygateError):
    status = 403
    code = "permission_denied"
    openai_type = "permission_error"
    anthropic_type = "permission_error"


class FeatureDisabled(PermissionDenied):
    """The feature is switched off. Carries the same figures as a LimitError (all
    zero, no retry-after) so callers can handle every refusal alike."""

    code = "feature_disabled"
    limit_key = ""
    limit = 0
    used = 0
    requested = 0
    remaining = 0
    retry_after: float | None = None


class LimitError(TallygateError):
    """A limit stopped the call. Carries the figures a caller needs to react."""

    def __init__(
        self,
        message: str,
        *,
        limit_key: str = "",
        limit: int = 0,
        used: int = 0,
        requested: int = 0,
        retry_after: float | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, **details)
        self.limit_key = limit_key
        self.limit = limit
        self.used = used
        self.requested = requested
        self.remaining = max(0, limit - used)
        self.retry_after = retry_after


class InputBudgetExceeded(LimitError):
    """The input is over the feature's max_input and the feature rejects."""

    status = 400
    code = "input_budget_exceeded"


class BudgetExceeded(LimitError):
    """A token/cost budget (day, month …) has no room for the call."""

    status = 429
    code = "budget_exceeded"
    openai_type = "tokens"
    anthropic_type = "rate_limit_error"


class RateLimited(BudgetExceeded):
    """A short-window rate limit (per minute, requests) has no room."""

    code = "rate_limited"
    openai_type = "requests"


class LoopLimit(BudgetExceeded):
    """A step of a run reached its attempt cap (`limits.run.max_attempts_per_step`):
    a 429 that no wait clears (`x-should-retry: false`); details name the run, the step
    and the cap."""

    code = "loop_limit"
    openai_type = "requests"


class RunawayContext(InputBudgetExceeded):
    """The runaway-context guard refused the call (`on_runaway: refuse`): its input is
    past `max_input_per_call`, or the run's inputs kept growing past `max_input_growth`."""

    code = "runaway_context"


class StoreUnavailable(BudgetExceeded):
    """The state store cannot be reached and the policy is fail_closed: no budget can
    be checked, so nothing is admitted. A 429 (as for any limit without room) with its
    own code; SDKs retry it after Retry-After (1 s) since the outage may be brief."""

    status = 429
    code = "store_unavailable"
    openai_type = "server_error"
    anthropic_type = "rate_limit_error"

    def __init__(self, message: str, **details: Any) -> None:
        details.setdefault("retry_after", 1)
        super().__init__(message, **details)


class UpstreamError(TallygateError):
    """The provider failed; status and body are the provider's own."""

    status = 502
    code = "upstream_error"
    openai_type = "server_error"
    anthropic_type = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, **details)
        self.upstream_status = status
        self.body = body
        self.headers = dict(headers or {})


class UpstreamInvalidUsage(UpstreamError):
    """The provider answered but reported a token usage no call can have (negative, or
    past 10^12): the answer is withheld and the call charged what it held."""

    code = "upstream_invalid_usage"


class ShuttingDown(TallygateError):
    """The gateway is stopping: a new request is refused so a load balancer or the
    client's retry sends it to another replica."""

    status = 503
    code = "shutting_down"
    openai_type = "server_error"
    anthropic_type = "overloaded_error"


@functools.cache
def driver_errors() -> tuple[type[BaseException], ...]:
    """What a store's driver raises when the store is down or refuses (sqlite3, OS,
    psycopg), for a front end to report as "storage unavailable". Called in an `except`
    clause, so psycopg is imported only once such an error is raised."""
    errors: list[type[BaseException]] = [sqlite3.Error, OSError]
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ImportError:  # pragma: no cover - psycopg is optional
        pass
    return tuple(errors)
