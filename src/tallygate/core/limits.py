"""Which limits apply to a call, and the `Hold`s to reserve on them. Pure.

Hold keys (stable; the state stores keep one counter per key and window bucket):

    global:<metric>:<window>                   limits.global
    feature:<feature>:<metric>:<window>        limits.feature.<name|default> + features.<name>
    plan:<plan>:<metric>:<window>              limits.plan.<name|default> (shared by its users)
    user:<user>:<metric>:<window>              limits.user, overridden by plans.<plan>
    key:<key id>:<metric>:<window>             limits.key, overridden by the key's own limits
    model:<model>:<metric>:<window>            limits.model.<name|default>
    run:<owner>:<run>:<metric>:<window>        limits.run
    step:<owner>:<run>:<step>:requests:run     limits.run.max_attempts_per_step

<metric> is tokens | requests | cost (nano-USD); <window> is minute | hour | day | month,
or `run` for a lifetime limit (never reset: `tokens_per_run` …, and the loop cap's
attempt count); a rolling limit adds `:rolling`. Ids are escaped so a user-chosen id
cannot forge another key: `%` `:` `{` `}`, whitespace and control characters become `%XX`.

A run belongs to its caller: <owner> is `user.<user>` (the key's user, so a user's keys
share their runs), else `key.<key id>`, else `-` (no identity: the library without a
user). Another caller sending the same run id counts on another key, so it can neither
spend nor see that run (`run:user.alice:ticket-42:tokens:run`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tallygate.types import Hold, Metric, Window

_DEFAULT = "default"
_UNSAFE = frozenset("%:{}")


def escape_id(value: str) -> str:
    """Make a user-provided id safe inside a hold key (reversible, `%XX` escapes)."""
    if value.isalnum():  # the common case stays allocation-free
        return value
    out = []
    for ch in value:
        if ch in _UNSAFE or ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def unescape_id(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value, errors="strict")


def hold_key(scope: str, ident: str | None, metric: Metric, window: Window, rolling: bool) -> str:
    """The documented key of one limit; `ident` must already be escaped."""
    head = scope if ident is None else f"{scope}:{ident}"
    tail = ":rolling" if rolling else ""
    return f"{head}:{metric.value}:{window.value}{tail}"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    scope: str
    ident: str | None  # unescaped (run keys: the run; step keys: the step)
    metric: Metric
    window: Window
    rolling: bool
    owner: str | None = None  # run and step keys: "user.<user>", "key.<id>" or "-"
    run: str | None = None  # run and step keys: the run id

    def describe(self) -> str:
        """How a message names the limit's holder: `run 'r1' of user 'alice'`."""
        if self.scope == "step":
            return f"step {self.ident!r} of run {self.run!r}{owner_words(self.owner)}"
        if self.ident is None:
            return self.scope
        return f"{self.scope} {self.ident!r}{owner_words(self.owner)}"


def owner_words(owner: str | None) -> str:
    """' of user 'alice'' for an owner segment (nothing for none or `-`)."""
    if not owner or owner == "-":
        return ""
    kind, _, ident = owner.partition(".")
    return f" of {kind} {ident!r}"


def parse_key(key: str) -> ParsedKey:
    """Inverse of hold_key (ValueError on a key not in the documented format)."""
    parts = key.split(":")
    rolling = parts[-1] == "rolling"
    if rolling:
        parts = parts[:-1]
    owner = run = None
    if len(parts) == 3:
        scope, ident = parts[0], None
    elif len(parts) == 4:
        scope, ident = parts[0], unescape_id(parts[1])
    elif len(parts) == 5 and parts[0] == "run":
        scope, owner, run = "run", unescape_id(parts[1]), unescape_id(parts[2])
        ident = run
    elif len(parts) == 6 and parts[0] == "step":
        scope, owner, run = "step", unescape_id(parts[1]), unescape_id(parts[2])
        ident = unescape_id(parts[3])
    else:
        raise ValueError(f"not a tallygate limit key: {key!r}")
    return ParsedKey(scope, ident, Metric(parts[-2]), Window(parts[-1]), rolling, owner, run)


def run_owner(identity: Identity) -> str:
    """The owner segment of a run's keys (escaped): the key's user, else the key."""
    if identity.user is not None:
        return "user." + escape_id(identity.user)
    if identity.key_id is not None:
        return "key." + escape_id(identity.key_id)
    return "-"


@dataclass(frozen=True, slots=True)
class LimitRule:
    """One limit after loading: `amount` of `metric` per `window` (cost in nano-USD)."""

    metric: Metric
    window: Window
    amount: int
    rolling: bool = False
    # The hold key's tail (`:tokens:day`, `:cost:month:rolling`), built once: see the
    # key format above.
    key_suffix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tail = ":rolling" if self.rolling else ""
        suffix = f":{self.metric.value}:{self.window.value}{tail}"
        object.__setattr__(self, "key_suffix", suffix)


Rules = tuple[LimitRule, ...]


@dataclass(slots=True)  # per-call record: not frozen (see types.py)
class Identity:
    """Who is calling. `key_limits` are the virtual key's own limits, if any; `step`
    (with `run`) is what the loop cap counts attempts of."""

    key_id: str | None = None
    user: str | None = None
    plan: str | None = None
    run: str | None = None
    key_limits: Rules | None = None
    step: str | None = None


@dataclass(slots=True)  # per-call record: not frozen (see types.py)
class Amounts:
    """The most one call can use: tokens (input + capped output × n), cost upper bound."""

    tokens: int
    cost_nusd: int
    requests: int = 1

    def of(self, metric: Metric) -> int:
        if metric is Metric.TOKENS:
            return self.tokens
        if metric is Metric.COST:
            return self.cost_nusd
        return self.requests

    def as_actual(self) -> dict[str, int]:
        """The per-metric mapping `StateStore.settle` takes."""
        return {
            Metric.TOKENS.value: self.tokens,
            Metric.REQUESTS.value: self.requests,
            Metric.COST.value: self.cost_nusd,
        }


def merge_rules(*layers: Iterable[LimitRule]) -> Rules:
    """Later layers override earlier ones per (metric, window)."""
    merged: dict[tuple[Metric, Window], LimitRule] = {}
    for layer in layers:
        for rule in layer:
            merged[(rule.metric, rule.window)] = rule
    return tuple(merged.values())


@dataclass(frozen=True, slots=True)
class LimitIndex:
    """The policy's limits merged per scope once (config builds it at load), so per-call
    work is lookups only."""

    global_: Rules
    feature: Mapping[str, Rules]
    feature_default: Rules
    plan: Mapping[str, Rules]
    plan_default: Rules
    user: Mapping[str, Rules]  # per plan name: limits.user overridden by the plan
    user_default: Rules
    key: Rules
    model: Mapping[str, Rules]
    model_default: Rules
    run: Rules
    step_attempts: int | None = None  # limits.run.max_attempts_per_step (the loop cap)


def holds_for(
    index: LimitIndex,
    identity: Identity,
    *,
    feature: str | None,
    model: str,
    amounts: Amounts,
) -> tuple[Hold, ...]:
    """Every hold a call must reserve, in a stable order:
    global, feature, plan, user, key, model, run, step (the loop cap)."""
    out: list[Hold] = []
    _add(out, "global", None, index.global_, amounts)
    fname = feature or _DEFAULT
    _add(out, "feature", fname, index.feature.get(fname, index.feature_default), amounts)
    if identity.plan is not None:
        rules = index.plan.get(identity.plan, index.plan_default)
        _add(out, "plan", identity.plan, rules, amounts)
    if identity.user is not None:
        rules = index.user_default
        if identity.plan is not None:
            rules = index.user.get(identity.plan, rules)
        _add(out, "user", identity.user, rules, amounts)
    if identity.key_id is not None:
        rules = index.key
        if identity.key_limits is not None:
            rules = merge_rules(rules, identity.key_limits)
        _add(out, "key", identity.key_id, rules, amounts)
    _add(out, "model", model, index.model.get(model, index.model_default), amounts)
    if identity.run is not None:
        run = f"{run_owner(identity)}:{escape_id(identity.run)}"
        _add(out, "run", None, index.run, amounts, prefix=f"run:{run}")
        cap = index.step_attempts
        if cap is not None and identity.step is not None:
            out.append(Hold(f"step:{run}:{escape_id(identity.step)}:requests:run",
                            amounts.requests, cap, Window.RUN, Metric.REQUESTS))
    return tuple(out)


def _add(out: list[Hold], scope: str, ident: str | None, rules: Rules, amounts: Amounts,
         *, prefix: str | None = None) -> None:
    if not rules:
        return
    if prefix is None:
        prefix = scope if ident is None else f"{scope}:{escape_id(ident)}"
    for rule in rules:  # positional Hold(...) and the prebuilt suffix: this is the hot path
        out.append(
            Hold(
                prefix + rule.key_suffix,
                amounts.of(rule.metric),
                rule.amount,
                rule.window,
                rule.metric,
                rule.rolling,
            )
        )
