"""Value objects shared by the core, the stores, the engine and the ledger.

Tokens and money are integers everywhere: money is in nano-USD (1e-9 USD).

Values are frozen dataclasses, except the records made afresh for every call
(`CallRecord` here, `CallContext`/`Call` in engine/call.py, `Identity`/`Amounts` in
core/limits.py, `RequestFacts`/`Decision` in core/decide.py): a frozen `__init__` sets
each field through `object.__setattr__`, ~0.1 µs a field, on the hot path."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

NANO_PER_USD = 1_000_000_000


class Window(StrEnum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"
    RUN = "run"  # a run's whole life: never resets (core/windows.py, docs/policy.md)


class Metric(StrEnum):
    TOKENS = "tokens"
    REQUESTS = "requests"
    COST = "cost"  # nano-USD


@dataclass(frozen=True, slots=True)
class Usage:
    """What a call used, as the provider reported it (or as estimated)."""

    input_tokens: int = 0  # all prompt tokens, cached ones included (OpenAI convention)
    output_tokens: int = 0  # reasoning tokens included
    cached_tokens: int = 0  # subset of input_tokens read from the provider's cache
    cache_write_tokens: int = 0  # subset of input_tokens written to the provider's cache
    reasoning_tokens: int = 0  # subset of output_tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Count:
    """A token count and whether it is exact (tiktoken) or an upper-bound estimate."""

    tokens: int
    exact: bool
    encoding: str


@dataclass(frozen=True, slots=True)
class Hold:
    """One line of a reservation: `amount` of `metric` on the limit `key`."""

    key: str  # e.g. "user:u42:tokens:day"
    amount: int
    limit: int
    window: Window
    metric: Metric = Metric.TOKENS
    rolling: bool = False


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a reservation was refused: the first hold without room."""

    key: str
    limit: int
    used: int  # used + reserved at the moment of the refusal
    requested: int
    reset_at: float  # unix seconds when room comes back at the latest
    window: Window
    metric: Metric


@dataclass(frozen=True, slots=True)
class NotHeld:
    """Why `StateStore.extend` found nothing to grow: the reservation is `unknown`
    (never made, or forgotten after the retention), `settled`, `released` or `expired`
    (its lease ended, reclaimed or not)."""

    request_id: str
    state: str


@dataclass(frozen=True, slots=True)
class LimitUsage:
    key: str
    limit: int
    used: int
    reserved: int
    reset_at: float

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used - self.reserved)


@dataclass(frozen=True, slots=True)
class SettleResult:
    """Per key: what was charged, and how much more than held (an estimate was low)."""

    charged: dict[str, int] = field(default_factory=dict)
    overrun: dict[str, int] = field(default_factory=dict)
    already_settled: bool = False


class Outcome(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    TRIMMED = "trimmed"
    CACHED = "cached"
    ERROR = "error"


@dataclass(slots=True)  # per-call record: not frozen (see above)
class CallRecord:
    """One ledger row: everything recorded about one call (docs/ledger.md).

    One row per call, keyed on `request_id`, which the server minted; the upstream tries
    a call took are listed in `detail` (`attempts`, `fallback`) and counted in
    `retries`. No prompt/completion text unless the policy sets log_content (then
    `content` holds it as JSON text)."""

    request_id: str
    ts: float  # unix seconds when the call started
    outcome: Outcome
    status: int  # HTTP status the client saw
    client_request_id: str | None = None  # the caller's X-Tallygate-Request-Id, if sent
    key_id: str | None = None
    user: str | None = None
    plan: str | None = None
    feature: str | None = None
    run: str | None = None
    step: str | None = None
    step_attempt: int | None = None  # X-Tallygate-Attempt (review loop number)
    provider: str | None = None
    model_requested: str | None = None
    model_used: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    exact: bool = True  # False when the tokens are our estimate, not provider-reported
    cost_nusd: int = 0
    latency_ms: int = 0
    ttft_ms: int | None = None
    upstream_ms: int | None = None  # time in the upstream call that answered
    retries: int = 0
    error_code: str | None = None
    tokens_saved: int = 0  # cache hits: tokens the call would have used
    trimmed_tokens: int = 0  # input tokens removed by trim/summarise
    stream: bool = False
    detail: str | None = None  # JSON text: what policy changed (clamp, route, halving …)
    content: str | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the catalog knows about one model. Prices are integer nano-USD per million
    tokens, so cost arithmetic stays exact (a 7-token call is priced to the nano-dollar)."""

    name: str
    provider: str
    context_window: int
    max_output_tokens: int
    encoding: str | None  # tiktoken encoding name; None = no public tokenizer (estimate)
    input_nusd_per_mtok: int = 0
    output_nusd_per_mtok: int = 0
    cached_input_nusd_per_mtok: int | None = None  # None = same as input
    cache_write_nusd_per_mtok: int | None = None  # None = same as input

    def cost_nusd(self, usage: Usage) -> int:
        """Cost of a call, rounded up to the nano-dollar (never under-charges)."""
        cached = usage.cached_tokens
        written = usage.cache_write_tokens
        plain = max(0, usage.input_tokens - cached - written)
        cached_rate = (
            self.input_nusd_per_mtok
            if self.cached_input_nusd_per_mtok is None
            else self.cached_input_nusd_per_mtok
        )
        write_rate = (
            self.input_nusd_per_mtok
            if self.cache_write_nusd_per_mtok is None
            else self.cache_write_nusd_per_mtok
        )
        micro = (
            plain * self.input_nusd_per_mtok
            + cached * cached_rate
            + written * write_rate
            + usage.output_tokens * self.output_nusd_per_mtok
        )
        return -(-micro // 1_000_000)  # ceil division: per-mtok rate → per-token
