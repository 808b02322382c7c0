"""The policy document (docs/policy.md) as frozen pydantic models.

Loading, `${VAR}` expansion and error formatting live in `config.py`; this module only
says what a valid document looks like. After validation every USD amount is an integer
number of nano-USD (converted exactly from the decimal text, never through a float)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from tallygate.core.limits import LimitIndex, LimitRule, Rules, merge_rules
from tallygate.core.runaway import DEFAULT_GROWTH_CALLS, RunawayPolicy
from tallygate.core.windows import CALENDAR_WINDOWS
from tallygate.errors import SecretNotSet
from tallygate.types import Metric, Window
from tallygate.units import to_decimal, usd_to_nano

_MODEL_CONFIG = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


# ---------------------------------------------------------------- scalar types


def _reject_bool(value: Any) -> Any:
    """`True` is an int in Python; a token count of `yes` is a typo, not 1."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number, not true/false")
    return value




def _finite_ratio(value: Any) -> Decimal:
    amount = to_decimal(value)
    if not amount.is_finite() or amount < 0:
        raise ValueError("expected a finite number >= 0")
    return amount


_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_SCALE = {"ms": Decimal("0.001"), "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _duration(value: Any) -> float:
    """Seconds from `30`, `30s`, `5m`, `1h`, `2d` or `250ms`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, 30s, 5m, 1h")
    if isinstance(value, int | float | Decimal):
        seconds = to_decimal(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError("expected a duration such as 30, 30s, 5m, 1h")
        seconds = Decimal(match.group(1)) * Decimal(_DURATION_SCALE[match.group(2)])
    if not seconds.is_finite() or seconds <= 0:
        raise ValueError("expected a duration > 0")
    return float(seconds)


def parse_duration(value: Any) -> float:
    """Seconds from `30`, `30s`, `5m`, `1h`, `2d` or `250ms` (ValueError otherwise), as the
    policy reads durations; for command-line options that take one."""
    return _duration(value)


class UnsetSecret(SecretStr):
    """A secret written as `${VAR}` whose variable is not set. Loading the policy works
    (offline commands never read a provider's key); reading the value raises
    SecretNotSet naming the variable, at the first call that needs it."""

    def __init__(self, variable: str, where: str) -> None:
        super().__init__("")
        self.variable = variable
        self.where = where

    def __bool__(self) -> bool:
        return True  # configured: only its value is missing here

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnsetSecret) and other.variable == self.variable

    def __hash__(self) -> int:
        return hash(self.variable)

    def __repr__(self) -> str:
        return f"UnsetSecret(${{{self.variable}}})"

    def get_secret_value(self) -> str:
        raise SecretNotSet(
            f"{self.where}: environment variable {self.variable} is not set "
            f"(export {self.variable}=… where tallygate runs)")


def unset_secrets(policy: PolicyModel) -> list[UnsetSecret]:
    """Every secret of the policy whose environment variable is missing."""
    found: list[SecretStr | None] = [p.api_key for p in policy.providers.values()]
    found += [policy.cache.hmac_key, policy.admin_key, policy.metrics.token]
    return [s for s in found if isinstance(s, UnsetSecret)]


def _empty_secret_is_none(value: Any) -> Any:
    """`api_key: ${OPENAI_API_KEY:-}` with the variable unset means 'no key'."""
    if value is None or (isinstance(value, str) and value == ""):
        return None
    return value


Tokens = Annotated[int, BeforeValidator(_reject_bool), Field(ge=0)]
PositiveInt = Annotated[int, BeforeValidator(_reject_bool), Field(ge=1)]
NanoUsd = Annotated[int, BeforeValidator(usd_to_nano)]
Ratio = Annotated[Decimal, BeforeValidator(_finite_ratio)]
Seconds = Annotated[float, BeforeValidator(_duration)]
Secret = Annotated[SecretStr | None, BeforeValidator(_empty_secret_is_none)]


# ---------------------------------------------------------------- limits


_LIFETIME_KEYS = ("tokens_per_run", "requests_per_run", "cost_usd_per_run",
                  "cost_per_run_usd")


class LimitFields(BaseModel):
    """`<metric>_per_<window>` limits of one scope. Cost limits are written in USD
    (`cost_usd_per_day: 12.5`, or `cost_per_day_usd`) and held as nano-USD."""

    model_config = _MODEL_CONFIG
    _windows: ClassVar[tuple[Window, ...]] = CALENDAR_WINDOWS

    tokens_per_minute: Tokens | None = None
    tokens_per_hour: Tokens | None = None
    tokens_per_day: Tokens | None = None
    tokens_per_month: Tokens | None = None
    requests_per_minute: Tokens | None = None
    requests_per_hour: Tokens | None = None
    requests_per_day: Tokens | None = None
    requests_per_month: Tokens | None = None
    cost_usd_per_minute: NanoUsd | None = None
    cost_usd_per_hour: NanoUsd | None = None
    cost_usd_per_day: NanoUsd | None = None
    cost_usd_per_month: NanoUsd | None = None
    cost_per_minute_usd: NanoUsd | None = None
    cost_per_hour_usd: NanoUsd | None = None
    cost_per_day_usd: NanoUsd | None = None
    cost_per_month_usd: NanoUsd | None = None
    rolling: bool = False

    def __repr_args__(self) -> Any:
        """Unset limits would drown the repr; show only what is set."""
        return [(k, v) for k, v in super().__repr_args__() if v is not None]

    @model_validator(mode="before")
    @classmethod
    def _lifetime_only_for_runs(cls, data: Any) -> Any:
        """`tokens_per_run` elsewhere than limits.run is a clear error, not a typo."""
        if Window.RUN not in cls._windows and isinstance(data, Mapping):
            found = [k for k in _LIFETIME_KEYS if k in data]
            if found:
                raise ValueError(f"{found[0]} is a run's lifetime budget: it belongs under "
                                 "limits.run (nothing else has a lifetime)")
        return data

    @model_validator(mode="after")
    def _one_spelling_per_cost(self) -> LimitFields:
        for window in self._windows:
            a = getattr(self, f"cost_usd_per_{window.value}")
            b = getattr(self, f"cost_per_{window.value}_usd")
            if a is not None and b is not None:
                raise ValueError(
                    f"give cost_usd_per_{window.value} or cost_per_{window.value}_usd, not both"
                )
        return self

    @functools.cached_property
    def rules(self) -> tuple[LimitRule, ...]:
        """Every limit set here, in a stable order (metric, then window)."""
        out: list[LimitRule] = []
        for metric, prefix in ((Metric.TOKENS, "tokens"), (Metric.REQUESTS, "requests")):
            for window in self._windows:
                amount = getattr(self, f"{prefix}_per_{window.value}")
                if amount is not None:
                    out.append(LimitRule(metric, window, amount, self._rolls(window)))
        for window in self._windows:
            amount = getattr(self, f"cost_usd_per_{window.value}")
            if amount is None:
                amount = getattr(self, f"cost_per_{window.value}_usd")
            if amount is not None:
                out.append(LimitRule(Metric.COST, window, amount, self._rolls(window)))
        return tuple(out)

    def _rolls(self, window: Window) -> bool:
        return self.rolling and window is not Window.RUN  # a lifetime never rolls


class LimitSet(LimitFields):
    """A scope's limits (plans, limits.global, limits.user, a key's own limits …)."""


class RunLimits(LimitSet):
    """limits.run: each run's calendar limits, its lifetime budget (`<metric>_per_run`,
    never reset), the loop cap and the runaway-context guard (docs/policy.md)."""

    _windows: ClassVar[tuple[Window, ...]] = (*CALENDAR_WINDOWS, Window.RUN)

    tokens_per_run: Tokens | None = None
    requests_per_run: Tokens | None = None
    cost_usd_per_run: NanoUsd | None = None
    cost_per_run_usd: NanoUsd | None = None
    max_attempts_per_step: PositiveInt | None = None
    max_input_per_call: PositiveInt | None = None
    max_input_growth: Ratio | None = None
    growth_calls: Annotated[int, BeforeValidator(_reject_bool),
                            Field(ge=2, le=64)] = DEFAULT_GROWTH_CALLS
    on_runaway: Literal["alert", "refuse"] = "alert"

    @field_validator("max_input_growth")
    @classmethod
    def _growth_above_one(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value <= 1:
            raise ValueError("expected a growth factor above 1 (1.5: half as much again)")
        return value

    @functools.cached_property
    def runaway(self) -> RunawayPolicy | None:
        """The runaway-context guard's policy; None when neither rule is set."""
        if self.max_input_per_call is None and self.max_input_growth is None:
            return None
        return RunawayPolicy(self.max_input_per_call, self.max_input_growth,
                             self.growth_calls, self.on_runaway == "refuse")


class Limits(BaseModel):
    """Limits per scope. `feature` and `model` map a name (or `default`, applied to
    every name not listed) to limits; `user`, `key` and `run` apply to each user, key
    and run separately; `plan` limits are shared by all users of that plan."""

    model_config = ConfigDict(**_MODEL_CONFIG, populate_by_name=True)

    global_: LimitSet = Field(default_factory=LimitSet, alias="global")
    feature: dict[str, LimitSet] = Field(default_factory=dict)
    user: LimitSet = Field(default_factory=LimitSet)
    plan: dict[str, LimitSet] = Field(default_factory=dict)
    key: LimitSet = Field(default_factory=LimitSet)
    model: dict[str, LimitSet] = Field(default_factory=dict)
    run: RunLimits = Field(default_factory=RunLimits)


# ---------------------------------------------------------------- sections


class Storage(BaseModel):
    model_config = _MODEL_CONFIG

    state: str = "sqlite:///tallygate.db"
    ledger: str = "sqlite:///tallygate.db"
    fail_mode: Literal["fail_closed", "fail_open"] = "fail_closed"
    # fail_open only: the share of each limit one replica may admit on its own while the
    # shared store is unreachable (state/guard.py; worst case R × share × limit).
    fail_open_share: Annotated[Decimal, BeforeValidator(_finite_ratio),
                               Field(gt=0, le=1)] = Decimal("0.1")
    # SQLite state only (docs/architecture.md): `owner` keeps the limits in this process's
    # memory with a journal (fastest; one process per file), `shared` runs every operation
    # as a SQLite transaction (any number of processes); `auto` = owner for a one-worker
    # `tallygate serve`, shared for everything else.
    state_mode: Literal["auto", "owner", "shared"] = "auto"
    lease_seconds: Seconds = 600.0
    # A run's lifetime counters are dropped once nobody wrote to them this long.
    run_ttl: Seconds = 30 * 86_400.0
    # The ledger writer's crash journal (docs/ledger.md): None = beside a SQLite ledger,
    # or ./.tallygate-journal for PostgreSQL. fsync: never | batch | always.
    ledger_journal: str | None = None
    ledger_fsync: Literal["never", "batch", "always"] = "never"

    @model_validator(mode="after")
    def _runs_outlive_leases(self) -> Storage:
        if self.run_ttl <= self.lease_seconds:
            raise ValueError("run_ttl must be longer than lease_seconds (a run's counters "
                             "must outlive any hold on them)")
        return self

    @field_validator("state")
    @classmethod
    def _state_scheme(cls, url: str) -> str:
        return _check_scheme(url, ("memory", "sqlite", "redis", "rediss"))

    @field_validator("ledger")
    @classmethod
    def _ledger_scheme(cls, url: str) -> str:
        return _check_scheme(url, ("memory", "sqlite", "postgresql", "postgres"))


def _check_scheme(url: str, schemes: tuple[str, ...]) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in schemes:
        wanted = ", ".join(f"{s}://" for s in schemes)
        raise ValueError(f"expected a URL starting with one of {wanted}")
    problem = _url_problem(scheme, url)
    if problem:
        raise ValueError(problem)
    return url


def _url_problem(scheme: str, url: str) -> str | None:
    """What is malformed in a storage URL (never echoing it: it may hold a password)."""
    if scheme == "memory":
        return None
    if scheme == "sqlite":
        bad = not url.startswith("sqlite:///") or len(url) == len("sqlite:///")
        return "expected sqlite:///PATH (or sqlite:///:memory:)" if bad else None
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return f"the port of this {scheme}:// URL is not a number from 0 to 65535"
    problem = None
    target = parts.path.strip("/")
    if scheme.startswith("redis") and not parts.hostname:
        problem = f"this {scheme}:// URL names no host"
    elif scheme in ("redis", "rediss") and target and not target.isdigit():
        problem = "expected redis://HOST:PORT/DB with DB a number"
    elif scheme.startswith("postgres") and not target:
        problem = f"expected {scheme}://USER@HOST:PORT/DATABASE (no database named)"
    return problem


def _check_http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return url


class Provider(BaseModel):
    model_config = _MODEL_CONFIG

    protocol: Literal["openai", "anthropic"]
    base_url: str
    api_key: Secret = None
    timeout: Seconds = 600.0
    headers: dict[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return _check_http_url(url)


class Feature(LimitFields):
    """One LLM feature: input/output caps, its model, and what happens past them.
    Limits on the feature scope may be written inline (`tokens_per_day: 50000`)."""

    max_input: Tokens | None = None
    max_output: PositiveInt | None = None
    model: str | None = None
    on_exceed: Literal["reject", "trim", "summarize"] = "reject"
    summarize_model: str | None = None
    cache: bool = False
    cache_ttl: Seconds | None = None
    fallbacks: tuple[str, ...] = ()
    on_limit: Literal["reject", "fallback"] = "reject"
    retries: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0, le=10)] = 2
    output_schema: dict[str, Any] | None = None
    log_content: bool | None = None  # None: the policy-wide log_content
    enabled: bool = True
    # A streaming call holds its input plus `stream_slice` output tokens and grows the
    # hold a slice at a time as tokens arrive (`streamed`), or holds the whole output cap
    # at once (`full`). None: streamed (docs/policy.md says why).
    reserve: Literal["full", "streamed"] | None = None
    stream_slice: PositiveInt = 2048

    @field_validator("output_schema")
    @classmethod
    def _plain_json_numbers(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        """YAML numbers load as Decimal; a JSON Schema is sent upstream as plain JSON."""
        return None if schema is None else _json_numbers(schema)


def _json_numbers(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_numbers(v) for v in value]
    return value


class Routing(BaseModel):
    model_config = _MODEL_CONFIG

    steps: dict[str, str] = Field(default_factory=dict)  # step → tier name or model


# Alerts that fire on an event, not past a threshold: a runaway call (limits.run says
# what that is), a limit used up (its first refusal in a window), that window's end.
NO_THRESHOLD = frozenset({"runaway_context", "budget_exhausted", "budget_reset"})


class Alert(BaseModel):
    model_config = _MODEL_CONFIG

    metric: Literal["cost_usd", "context_utilization", "budget_used", "rejection_rate",
                    "runaway_context", "budget_exhausted", "budget_reset"]
    above: Ratio | None = None  # required but for the metrics below that have no threshold
    notify: str
    format: Literal["json", "slack"] = "json"  # slack: a Slack incoming webhook's body
    window: Window | None = None
    scope: str | None = None  # e.g. user, feature, feature:chat

    @model_validator(mode="after")
    def _threshold_and_window(self) -> Alert:
        if self.metric in NO_THRESHOLD:
            if self.above is not None and self.metric != "runaway_context":  # (it took one)
                raise ValueError(f"a {self.metric} alert has no `above`: it fires on the "
                                 "event itself")
        elif self.above is None:
            raise ValueError(f"a {self.metric} alert needs `above` (its threshold)")
        if self.window is Window.RUN:
            raise ValueError("an alert fires once per minute, hour, day or month, not run")
        return self

    @field_validator("notify")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return _check_http_url(url)

    @property
    def threshold(self) -> Decimal:
        """`above` (every metric but runaway_context has one)."""
        assert self.above is not None
        return self.above

    @property
    def above_nusd(self) -> int:
        """The threshold of a cost_usd alert in nano-USD."""
        return usd_to_nano(self.threshold)


class Cache(BaseModel):
    model_config = _MODEL_CONFIG

    hmac_key: Secret = None
    ttl: Seconds = 3600.0
    backend: str | None = None  # None: the state store


class LoopLag(BaseModel):
    """The event-loop stall monitor (observe/loop_lag.py; docs/observability.md)."""

    model_config = _MODEL_CONFIG

    enabled: bool = False
    # Stalls longer than this are counted, and logged (what ran) at DEBUG.
    log_above: Seconds = 0.005
    interval: Seconds = 1.0  # the histogram observes the longest stall of each interval


class Server(BaseModel):
    model_config = _MODEL_CONFIG

    host: str = "127.0.0.1"
    port: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0, le=65535)] = 8080
    max_body_bytes: PositiveInt = 32 * 1024 * 1024
    max_chars: PositiveInt = 4_000_000  # counting refuses longer texts (InputTooLarge)
    # Upstream HTTP client: the lean httptools one (gateway/upstream/lean.py), or aiohttp.
    upstream: Literal["aiohttp", "lean"] = "lean"
    # The connection defences (gateway/guarded_http.py; docs/gateway.md). `http: uvicorn`
    # is plain uvicorn + httptools without them (for comparison only).
    http: Literal["guarded", "uvicorn"] = "guarded"
    header_timeout: Seconds = 10.0  # request line + headers, from the first byte
    body_timeout: Seconds = 30.0  # the whole body, from the end of the headers
    idle_timeout: Seconds = 5.0  # a kept-alive connection with no new request
    max_connections: PositiveInt = 1024  # per worker; more get 503, then are closed
    max_header_bytes: Annotated[int, BeforeValidator(_reject_bool),
                                Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    # Failed key checks (401) allowed per client address and minute before its key
    # checks are refused with 429 for the rest of that minute; 0 = no throttling.
    auth_failures_per_minute: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0)] = 20
    # On SIGTERM / Ctrl-C: how long calls in flight may run on before their streams are
    # cut (each settled with what it relayed, and recorded).
    shutdown_deadline: Seconds = 10.0
    loop_lag: LoopLag = Field(default_factory=LoopLag)


class Dashboard(BaseModel):
    """`/dashboard` (docs/dashboard.md): the admin key signs in with every right; the
    optional `viewer_key` signs in to see everything and change nothing."""

    model_config = _MODEL_CONFIG

    viewer_key: Secret = Field(default=None, repr=False)
    refresh_seconds: Annotated[float, Field(ge=1, le=3600)] = 5.0
    session_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 12.0


class Tracing(BaseModel):
    """OpenTelemetry spans (docs/observability.md). Off unless an exporter is chosen."""

    model_config = _MODEL_CONFIG

    exporter: Literal["otlp", "console", "none"] = "none"
    endpoint: str | None = None  # OTLP/HTTP URL; None = the OTEL_* environment defaults
    service_name: str = "tallygate"


class Metrics(BaseModel):
    model_config = _MODEL_CONFIG

    high_cardinality_labels: tuple[Literal["user", "run", "key"], ...] = ()
    # When set, GET /metrics needs `Authorization: Bearer <token>` (it shows spend).
    token: Secret = None


class Refusals(BaseModel):
    """How a limit refusal is told to clients (docs/gateway.md, Errors)."""

    model_config = _MODEL_CONFIG

    # A refusal whose limit resets within this keeps Retry-After (clients wait and retry);
    # a later reset — or a call larger than the limit — is final: OpenAI's quota shape
    # (`insufficient_quota`), `x-should-retry: false` and no Retry-After to sleep on.
    retry_within: Seconds = 60.0


_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class Attribution(BaseModel):
    """Where a call's run and end user come from when the client sets no tallygate
    header: coding agents' own session ids (docs/agents.md). On by default."""

    model_config = _MODEL_CONFIG

    agent_sessions: bool = True  # a session id becomes the run when X-Tallygate-Run is absent
    # Read in this order; the first one present wins.
    session_headers: tuple[str, ...] = ("x-claude-code-session-id", "session-id", "thread-id")
    # Claude Code's metadata.user_id JSON: its session_id is a run, the rest the end user.
    session_from_metadata: bool = True

    @field_validator("session_headers")
    @classmethod
    def _header_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(name.strip().lower() for name in names)
        bad = [name for name in out if not _HEADER_NAME.match(name)]
        if bad:
            raise ValueError(f"not an HTTP header name: {bad[0]!r} (letters, digits and '-')")
        return out


class CheckBudget(BaseModel):
    """One `check.budgets` entry: the files a glob matches and what they may use.

    `max_tokens`, `max_cost_usd` (the input price of the tokens) and `feature` (must fit
    that feature's `max_input`, the number the gateway enforces) apply to each file
    (`per: file`) or to the sum over the entry's files (`per: entry`); `max_growth` is a
    percentage, checked with `tallygate check --compare-to REF`."""

    model_config = _MODEL_CONFIG

    path: Annotated[str, Field(min_length=1, max_length=1024)]
    name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    model: str | None = None
    max_tokens: Tokens | None = None
    max_cost_usd: NanoUsd | None = None
    feature: str | None = None
    max_growth: Ratio | None = None
    per: Literal["file", "entry"] = "file"

    @field_validator("path")
    @classmethod
    def _inside_the_tree(cls, path: str) -> str:
        """A glob relative to the file that declares it; it may not climb out of it."""
        if "\x00" in path or path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
            raise ValueError("expected a relative glob such as prompts/**/*.txt")
        if ".." in path.replace("\\", "/").split("/"):
            raise ValueError("a glob may not contain '..' (it is relative to its file)")
        return path

    @property
    def label(self) -> str:
        return self.name or self.path


class CheckSection(BaseModel):
    """`check:` (or pyproject's `[tool.tallygate.check]`): prompt budgets per glob for
    `tallygate check`. `model` and `max_growth` are the defaults of every entry; an entry
    with no limit at all is refused when it is checked (ci/check.py)."""

    model_config = _MODEL_CONFIG

    model: str | None = None
    max_growth: Ratio | None = None
    budgets: tuple[CheckBudget, ...] = ()


_TIER_PREFIX = "tier:"
DEFAULT = "default"  # the feature / plan / model name that stands for every other


class PolicyModel(BaseModel):
    """The whole document. See docs/policy.md for every key."""

    model_config = _MODEL_CONFIG

    storage: Storage = Field(default_factory=Storage)
    providers: dict[str, Provider] = Field(default_factory=dict)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tiers: dict[str, str] = Field(default_factory=dict)
    features: dict[str, Feature] = Field(default_factory=dict)
    plans: dict[str, LimitSet] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    routing: Routing = Field(default_factory=Routing)
    alerts: tuple[Alert, ...] = ()
    flags: dict[str, bool] = Field(default_factory=dict)
    cache: Cache = Field(default_factory=Cache)
    server: Server = Field(default_factory=Server)
    admin_key: Secret = None
    log_content: bool = False
    metrics: Metrics = Field(default_factory=Metrics)
    tracing: Tracing = Field(default_factory=Tracing)
    refusals: Refusals = Field(default_factory=Refusals)
    attribution: Attribution = Field(default_factory=Attribution)
    dashboard: Dashboard = Field(default_factory=Dashboard)
    check: CheckSection = Field(default_factory=CheckSection)

    # An X-Tallygate-Feature value that names no feature: counted as the `default`
    # feature (its limits and kill switch, one shared counter), or refused.
    unknown_features: Literal["default", "reject"] = "default"

    @model_validator(mode="after")
    def _runaway_alerts_have_a_rule(self) -> PolicyModel:
        if (any(a.metric == "runaway_context" for a in self.alerts)
                and self.limits.run.runaway is None):
            raise ValueError("alerts: a runaway_context alert needs limits.run."
                             "max_input_per_call or limits.run.max_input_growth")
        return self

    @functools.cached_property
    def limit_index(self) -> LimitIndex:
        """Per-scope limits merged once at load, so a decision only does lookups."""
        return build_limit_index(self)


def build_limit_index(policy: PolicyModel) -> LimitIndex:
    """The core's per-scope view of the policy's limits (later layers win per window)."""
    lim = policy.limits
    f_default = lim.feature[DEFAULT].rules if DEFAULT in lim.feature else ()
    features = {
        name: merge_rules(
            f_default,
            lim.feature[name].rules if name in lim.feature else (),
            policy.features[name].rules if name in policy.features else (),
        )
        for name in {*lim.feature, *policy.features}
    }
    m_default = lim.model[DEFAULT].rules if DEFAULT in lim.model else ()
    return LimitIndex(
        global_=lim.global_.rules,
        feature=features,
        feature_default=features.get(DEFAULT, f_default),
        plan={name: s.rules for name, s in lim.plan.items()},
        plan_default=lim.plan[DEFAULT].rules if DEFAULT in lim.plan else (),
        user={name: merge_rules(lim.user.rules, p.rules) for name, p in policy.plans.items()},
        user_default=lim.user.rules,
        key=lim.key.rules,
        model={n: merge_rules(m_default, s.rules) for n, s in lim.model.items()},
        model_default=m_default,
        run=lim.run.rules,
        step_attempts=lim.run.max_attempts_per_step,
    )


def key_rules(limits: Mapping[str, Any] | None) -> Rules | None:
    """A virtual key's own limits (as stored on the key) as the core's rules."""
    return LimitFields.model_validate(dict(limits)).rules if limits else None
