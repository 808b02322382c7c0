"""The verdict on one call, before any I/O. Pure and fast (lookups and integer maths).

The engine calls, in order: `resolve_model` (routing) → catalog lookup → count →
`decide` → reserve `Decision.holds` → on a `Denial`, `denial_to_error`. When the verdict
is TRIM/SUMMARIZE the engine shortens the input to `trim_to` tokens, counts again and
calls `decide` again with the new count.

`decide` also refuses, before any store trip, a call whose `X-Tallygate-Attempt` is past
the loop cap (`check_attempt`: 429 `loop_limit`) and run or step names over MAX_NAME
characters; the store counts the attempts themselves (the `step:` hold)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from tallygate.core.limits import (
    Amounts,
    Identity,
    LimitIndex,
    ParsedKey,
    holds_for,
    owner_words,
    parse_key,
)
from tallygate.core.windows import is_lifetime
from tallygate.errors import (
    BudgetExceeded,
    InputBudgetExceeded,
    InvalidRequest,
    LoopLimit,
    RateLimited,
    UnknownModel,
)
from tallygate.types import (
    NANO_PER_USD,
    Count,
    Denial,
    Hold,
    LimitUsage,
    Metric,
    ModelInfo,
    Window,
)


class FeatureRules(Protocol):
    """What the verdict reads of one feature's settings."""

    @property
    def max_input(self) -> int | None: ...
    @property
    def max_output(self) -> int | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def on_exceed(self) -> str: ...


class StepRouting(Protocol):
    @property
    def steps(self) -> Mapping[str, str]: ...


class Policy(Protocol):
    """What the verdict reads of the policy (`tallygate.config.Policy` is one): the core
    names the shape it needs and imports nothing above it."""

    @property
    def tiers(self) -> Mapping[str, str]: ...
    @property
    def routing(self) -> StepRouting: ...
    @property
    def limit_index(self) -> LimitIndex: ...
    def feature(self, name: str | None) -> FeatureRules: ...

AUTO = "auto"
TIER_PREFIX = "tier:"
DEFAULT_MAX_OUTPUT = 4096  # only when neither the feature, the model nor the client bounds it
NO_RETRY_AFTER_SECONDS = 60  # a reset further away than this: the refusal is final
MAX_NAME = 256  # characters of a caller-chosen run or step name


class Action(StrEnum):
    ADMIT = "admit"
    TRIM = "trim"
    SUMMARIZE = "summarize"
    REJECT = "reject"


class ClampReason(StrEnum):
    FEATURE_CAP = "feature_cap"  # features.<f>.max_output, shared by the n choices
    CONTEXT_WINDOW = "context_window"  # what the context window leaves after the input
    MODEL_MAX_OUTPUT = "model_max_output"  # the model's own output limit
    DEFAULT = "default"  # nothing else bounded it


@dataclass(slots=True)  # not frozen: its __init__ would cost ~0.1 µs a field, per call
class RequestFacts:
    """What the engine knows about a call before deciding. Routing already happened
    (`resolve_model`); `decide` takes the resolved model's ModelInfo separately."""

    protocol: str  # "openai" | "anthropic"
    model: str  # the model name as the client sent it (for records; may be "auto")
    feature: str | None
    input: Count
    max_output: int | None = None  # max_tokens / max_completion_tokens as sent, per choice
    n: int = 1
    step: str | None = None
    identity: Identity = field(default_factory=Identity)
    # The smallest output cap the request works with when lowered (tokens, why, param):
    # the adapters' `output_floor` (extended thinking, the Responses minimum).
    output_floor: tuple[int, str, str] | None = None
    attempt: int | None = None  # X-Tallygate-Attempt: the client's loop count, from 1


@dataclass(slots=True)  # not frozen: its __init__ would cost ~0.1 µs a field, per call
class Clamp:
    """Max output per choice was set (requested None) or lowered, and why."""

    value: int
    reason: ClampReason
    requested: int | None


@dataclass(slots=True)  # not frozen: its __init__ would cost ~0.1 µs a field, per call
class Decision:
    action: Action
    model: str
    feature: str | None
    input_tokens: int
    exact: bool
    max_output: int = 0  # per choice, to send upstream (ADMIT only)
    clamp: Clamp | None = None
    trim_to: int | None = None  # TRIM/SUMMARIZE: shorten the input to this many tokens
    error: InputBudgetExceeded | None = None  # REJECT: raise this
    holds: tuple[Hold, ...] = ()
    amounts: Amounts | None = None


# ---------------------------------------------------------------- routing


def resolve_model(
    requested: str | None, *, feature: str | None, step: str | None, policy: Policy
) -> str:
    """The model a call goes to. `tier:NAME` → tiers; `auto` or no model → the step's
    routing (routing.steps), else the feature's model. Any other name is kept."""
    name = (requested or "").strip()
    if name and name != AUTO:
        return _tier(name[len(TIER_PREFIX) :], policy) if name.startswith(TIER_PREFIX) else name
    if step:
        routed = policy.routing.steps.get(step)
        if routed:
            if routed.startswith(TIER_PREFIX):
                return _tier(routed[len(TIER_PREFIX) :], policy)
            return policy.tiers.get(routed, routed)
    own = policy.feature(feature).model
    if own:
        return _tier(own[len(TIER_PREFIX) :], policy) if own.startswith(TIER_PREFIX) else own
    steps = ", ".join(sorted(policy.routing.steps)) or "none configured"
    raise InvalidRequest(
        f"model {name or '(none)'!r} needs a routed step (X-Tallygate-Step: {steps}) "
        f"or a feature with a model",
        param="model",
    )


def _tier(tier: str, policy: Policy) -> str:
    found = policy.tiers.get(tier)
    if found is None:
        raise UnknownModel(TIER_PREFIX + tier, [TIER_PREFIX + t for t in sorted(policy.tiers)])
    return found


# ---------------------------------------------------------------- the verdict


def decide(facts: RequestFacts, policy: Policy, model: ModelInfo) -> Decision:
    """Admit (with the output clamp and the holds), trim, or reject the input."""
    if facts.n < 1:
        raise InvalidRequest("n must be at least 1", param="n")
    if facts.max_output is not None and facts.max_output < 1:
        raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
    identity = _with_step(facts)
    check_attempt(identity, facts.attempt, policy.limit_index.step_attempts)
    feature = policy.feature(facts.feature)
    over = _over_input(facts, feature.max_input, model)
    if over is not None:
        return _on_exceed(facts, policy, model, over)
    value, clamp = _clamp_output(facts, feature.max_output, model)
    if clamp is not None and facts.output_floor is not None:
        _check_floor(facts, clamp, feature.max_output, model)
    out_total = value * facts.n
    tokens = facts.input.tokens
    amounts = Amounts(
        tokens=tokens + out_total,
        cost_nusd=cost_upper_bound(model, tokens, out_total),
    )
    holds = holds_for(
        policy.limit_index, identity, feature=facts.feature, model=model.name, amounts=amounts
    )
    return Decision(
        Action.ADMIT,
        model.name,
        facts.feature,
        tokens,
        facts.input.exact,
        max_output=value,
        clamp=clamp,
        holds=holds,
        amounts=amounts,
    )


def _with_step(facts: RequestFacts) -> Identity:
    """The identity the holds are for, with the call's step (the loop cap counts it),
    its run and step names bounded."""
    identity = facts.identity
    for name, value in (("X-Tallygate-Run", identity.run),
                        ("X-Tallygate-Step", identity.step or facts.step)):
        if value is not None and (len(value) > MAX_NAME or not value.isprintable()):
            raise InvalidRequest(f"{name} must be at most {MAX_NAME} printable characters",
                                 param=name)
    if identity.step is None and facts.step is not None and identity.run is not None:
        identity = Identity(identity.key_id, identity.user, identity.plan, identity.run,
                            identity.key_limits, facts.step)
    return identity


def check_attempt(identity: Identity, attempt: int | None, cap: int | None) -> None:
    """Refuse outright (429 loop_limit) a call saying it is attempt N+1 or later of a
    step capped at N attempts, with or without a run."""
    if cap is None or attempt is None or attempt <= cap:
        return
    raise _loop_limit(identity.run, identity.step, cap, attempt, key="")


def _loop_limit(run: str | None, step: str | None, cap: int, attempt: int, *, key: str,
                owner: str | None = None) -> LoopLimit:
    where = f"Step {step or '(none)'!r} of run {run or '(none)'!r}{owner_words(owner)}"
    return LoopLimit(
        f"{where} reached its loop limit: at most {cap} attempts "
        f"(limits.run.max_attempts_per_step); this is attempt {attempt}. Change the "
        "approach, or start a new run",
        limit_key=key, limit=cap, used=min(cap, attempt - 1), requested=1,
        retry_after=None, should_retry=False, run=run, step=step, attempt=attempt,
    )


def cost_upper_bound(model: ModelInfo, input_tokens: int, output_tokens: int) -> int:
    """`model.cost_nusd(Usage(input_tokens, output_tokens))` without building a Usage
    (hot path): no cached tokens, so plain input rate; rounded up to the nano-dollar."""
    micro = input_tokens * model.input_nusd_per_mtok + output_tokens * model.output_nusd_per_mtok
    return -(-micro // 1_000_000)


def _over_input(facts: RequestFacts, max_input: int | None, model: ModelInfo) -> str | None:
    """Which input bound the call breaks: "feature", "context" or None.
    The boundary is exact: input == max_input is admitted, max_input + 1 is not."""
    tokens = facts.input.tokens
    if max_input is not None and tokens > max_input:
        return "feature"
    if model.context_window > 0 and tokens >= model.context_window:
        return "context"  # not even one output token would fit
    return None


def _on_exceed(facts: RequestFacts, policy: Policy, model: ModelInfo, over: str) -> Decision:
    feature = policy.feature(facts.feature)
    base = (model.name, facts.feature, facts.input.tokens, facts.input.exact)
    if feature.on_exceed == "reject":
        error = _input_error(facts, feature.max_input, model, over)
        return Decision(Action.REJECT, *base, error=error)
    targets = [] if feature.max_input is None else [feature.max_input]
    ctx = model.context_window
    if ctx > 0:
        # Leave the output room the call would want, but never more than half the window.
        want = min(_wanted_output(facts, feature.max_output, model), ctx // 2)
        targets.append(ctx - max(1, want))
    action = Action.TRIM if feature.on_exceed == "trim" else Action.SUMMARIZE
    return Decision(action, *base, trim_to=min(targets))


def _wanted_output(facts: RequestFacts, cap: int | None, model: ModelInfo) -> int:
    candidates = [v for v in (facts.max_output, model.max_output_tokens) if v]
    if cap is not None:
        candidates.append(max(1, cap // facts.n))
    return min(candidates, default=DEFAULT_MAX_OUTPUT)


def _input_error(
    facts: RequestFacts, max_input: int | None, model: ModelInfo, over: str
) -> InputBudgetExceeded:
    tokens = facts.input.tokens
    approx = "" if facts.input.exact else " (estimated)"
    name = facts.feature or "default"
    if over == "feature":
        assert max_input is not None
        return InputBudgetExceeded(
            f"Input of {tokens} tokens{approx} is over the max_input of {max_input} tokens "
            f"for feature {name!r}",
            param="messages",
            limit_key=f"feature:{name}:max_input",
            limit=max_input,
            requested=tokens,
            feature=name,
        )
    return InputBudgetExceeded(
        f"Input of {tokens} tokens{approx} does not fit the {model.context_window}-token "
        f"context window of model {model.name!r} (no room left for any output)",
        param="messages",
        limit_key=f"model:{model.name}:context_window",
        limit=model.context_window,
        requested=tokens,
        feature=name,
    )


def _clamp_output(
    facts: RequestFacts, cap: int | None, model: ModelInfo
) -> tuple[int, Clamp | None]:
    """Max output per choice: the tightest of the feature cap (divided among the n
    choices), the model's own maximum, and what the context window leaves."""
    value, reason = -1, ClampReason.DEFAULT  # -1: nothing bounds it yet
    if cap is not None:
        value, reason = cap // facts.n, ClampReason.FEATURE_CAP
        if value < 1:
            raise InvalidRequest(
                f"n={facts.n} choices cannot share the max_output of {cap} tokens "
                f"of feature {facts.feature or 'default'!r}",
                param="n",
            )
    most = model.max_output_tokens
    if most > 0 and (value < 0 or most < value):
        value, reason = most, ClampReason.MODEL_MAX_OUTPUT
    if model.context_window > 0:
        room = model.context_window - facts.input.tokens
        if value < 0 or room < value:
            value, reason = room, ClampReason.CONTEXT_WINDOW
    if value < 0:
        value = DEFAULT_MAX_OUTPUT
    requested = facts.max_output
    if requested is not None and requested <= value:
        return requested, None
    return value, Clamp(value, reason, requested)


def _check_floor(facts: RequestFacts, clamp: Clamp, cap: int | None, model: ModelInfo) -> None:
    """A lowered cap below what the request needs (a thinking budget of at least 1024,
    the Responses minimum): a clear 400 naming the cap, before anything is reserved."""
    assert facts.output_floor is not None
    floor, why, param = facts.output_floor
    if clamp.value >= floor:
        return
    if clamp.reason is ClampReason.FEATURE_CAP:
        shared = f", shared by {facts.n} choices" if facts.n > 1 else ""
        what = (f"The max_output of feature {facts.feature or 'default'!r} "
                f"({cap} tokens{shared})")
    elif clamp.reason is ClampReason.MODEL_MAX_OUTPUT:
        what = f"The output limit of model {model.name!r} ({model.max_output_tokens} tokens)"
    elif clamp.reason is ClampReason.CONTEXT_WINDOW:
        what = f"What the context window of model {model.name!r} leaves after the input"
    else:
        what = "The default output cap"
    raise InvalidRequest(
        f"{what} lowers the output cap to {clamp.value} tokens, below the {floor} this "
        f"request needs: {why}.",
        param=param,
    )


# ---------------------------------------------------------------- denials


_WINDOW_WORD = {
    Window.MINUTE: "per-minute",
    Window.HOUR: "hourly",
    Window.DAY: "daily",
    Window.MONTH: "monthly",
    Window.RUN: "lifetime",
}
_METRIC_WORD = {Metric.TOKENS: "token", Metric.REQUESTS: "request", Metric.COST: "cost"}


def denial_to_error(
    denial: Denial, now: float, *, retry_within: float = NO_RETRY_AFTER_SECONDS
) -> BudgetExceeded | RateLimited | LoopLimit:
    """A refused reservation as the error the client gets. RateLimited for minute windows
    and request counts, BudgetExceeded otherwise. `retry_after` is the whole seconds to
    the reset (at least 1). `details["should_retry"]` is False — the refusal is final,
    retrying before the reset cannot help — when the reset is more than `retry_within`
    seconds away (the policy's `refusals.retry_within`) or the call alone is larger than
    the limit; the gateway then answers in the quota shape (no Retry-After that would
    invite a sleep, `x-should-retry: false`) and the message says so. A lifetime limit
    never resets: BudgetExceeded with no `retry_after`, final, `reset_at` None; the loop
    cap's counter (a `step:` key) gives LoopLimit (429 loop_limit)."""
    parsed = _parsed(denial.key)
    if parsed is not None and parsed.scope == "step":
        return _loop_limit(parsed.run, parsed.ident, denial.limit, denial.used + 1,
                           key=denial.key, owner=parsed.owner)
    if is_lifetime(denial.window):
        return BudgetExceeded(
            _denial_message(denial, None, denial.requested > denial.limit, final=True),
            limit_key=denial.key, limit=denial.limit, used=denial.used,
            requested=denial.requested, retry_after=None, should_retry=False,
            reset_at=None, window=denial.window.value, metric=denial.metric.value,
        )
    retry_after = max(1, math.ceil(denial.reset_at - now))
    too_big = denial.requested > denial.limit
    should_retry = not too_big and retry_after <= retry_within
    rate = denial.window is Window.MINUTE or denial.metric is Metric.REQUESTS
    cls = RateLimited if rate else BudgetExceeded
    return cls(
        _denial_message(denial, retry_after, too_big, final=not should_retry),
        limit_key=denial.key,
        limit=denial.limit,
        used=denial.used,
        requested=denial.requested,
        retry_after=retry_after,
        should_retry=should_retry,
        reset_at=denial.reset_at,
        window=denial.window.value,
        metric=denial.metric.value,
    )


def _parsed(key: str) -> ParsedKey | None:
    try:
        return parse_key(key)
    except ValueError:
        return None


def _denial_message(denial: Denial, retry_after: int | None, too_big: bool, *,
                    final: bool) -> str:
    what = f"{_WINDOW_WORD[denial.window]} {_METRIC_WORD[denial.metric]} limit"
    parsed = _parsed(denial.key)
    who = denial.key if parsed is None else parsed.describe()
    fmt = _money if denial.metric is Metric.COST else str
    if too_big:
        return (
            f"This call needs up to {fmt(denial.requested)}, more than the {what} of {who} "
            f"({fmt(denial.limit)}); lower max_tokens or shorten the input"
        )
    then = ("it never resets: start a new run" if retry_after is None
            else f"resets in {go_duration(retry_after)}")
    text = (
        f"The {what} of {who} has no room: {fmt(denial.used)} of {fmt(denial.limit)} used, "
        f"this call needs up to {fmt(denial.requested)}; {then}"
    )
    if final and retry_after is not None:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(denial.reset_at))
        text += f" (at {at}). This limit will not clear soon: do not retry before then"
    return text


def _money(nano: int) -> str:
    return f"${(Decimal(nano) / NANO_PER_USD).normalize():f}"


# ---------------------------------------------------------------- headers


def go_duration(seconds: float) -> str:
    """A duration the way OpenAI writes x-ratelimit-reset-* (Go's time.Duration):
    `12ms`, `1s`, `6m0s`, `1h2m3.5s`. Millisecond precision, rounded up."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    sec_text = f"{secs}.{millis:03d}".rstrip("0").rstrip(".") if millis else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


_HEADER_METRICS = {Metric.TOKENS: "tokens", Metric.REQUESTS: "requests"}


@functools.lru_cache(maxsize=4096)
def _key_metric(key: str) -> Metric | None:
    """The metric a limit key counts (None if not a limit key); the same few keys come
    back on every request."""
    try:
        return parse_key(key).metric
    except ValueError:
        return None


def ratelimit_headers(usages: Iterable[LimitUsage], now: float) -> dict[str, str]:
    """OpenAI-style `x-ratelimit-{limit,remaining,reset}-{tokens,requests}` for the
    tightest limit of each metric (least remaining; then the sooner reset)."""
    tightest: dict[Metric, LimitUsage] = {}
    for usage in usages:
        metric = _key_metric(usage.key)
        if metric not in _HEADER_METRICS or usage.reset_at == math.inf:
            continue  # (a lifetime limit is a budget, not a rate: it never resets)
        best = tightest.get(metric)
        if best is None or (usage.remaining, usage.reset_at) < (best.remaining, best.reset_at):
            tightest[metric] = usage
    headers: dict[str, str] = {}
    for metric, usage in tightest.items():
        suffix = _HEADER_METRICS[metric]
        headers[f"x-ratelimit-limit-{suffix}"] = str(usage.limit)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(usage.remaining)
        headers[f"x-ratelimit-reset-{suffix}"] = go_duration(usage.reset_at - now)
    return headers
