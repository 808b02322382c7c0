"""Which limits apply to a call, and the `Hold`s to reserve on them. Pure.

Hold keys (stable; the state stores keep one counter per key and window bucket):

    global:<metric>:<window>                   limits.global
    feature:<feature>:<metric>:<window>        limits.feature.<name|default> + features.<name>
    plan:<plan>:<metric>:<window>              limits.plan.<name|default> (shared by its users)
    user:<user>:<metric>:<window>              limits.user, overridden by plans.<plan>
    key:<key id>:<metric>:<window>             limits.key, overridden by the key's own limits
    model:<model>:<metric>:<window>            limits.model.<name|default>
    run:<run>:<metric>:<window>                limits.run

<metric> is tokens | requests | cost (nano-USD); <window> is minute | hour | day | month;
a rolling limit adds `:rolling`. Ids are escaped so a user-chosen id cannot forge another
key: `%` `:` `{` `}`, whitespace and control characters become `%XX`."""

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
    ident: str | None  # unescaped
    metric: Metric
    window: Window
    rolling: bool


def parse_key(key: str) -> ParsedKey:
    """Inverse of hold_key (ValueError on a key not in the documented format)."""
    parts = key.split(":")
    rolling = parts[-1] == "rolling"
    if rolling:
        parts = parts[:-1]
    if len(parts) == 3:
        scope, ident = parts[0], None
    elif len(parts) == 4:
        scope, ident = parts[0], unescape_id(parts[1])
    else:
        raise ValueError(f"not a tallygate limit key: {key!r}")
    return ParsedKey(scope, ident, Metric(parts[-2]), Window(parts[-1]), rolling)


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
    """Who is calling. `key_limits` are the virtual key's own limits, if any."""

    key_id: str | None = None
    user: str | None = None
    plan: str | None = None
    run: str | None = None
    key_limits: Rules | None = None


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


def holds_for(
    index: LimitIndex,
    identity: Identity,
    *,
    feature: str | None,
    model: str,
    amounts: Amounts,
) -> tuple[Hold, ...]:
    """Every hold a call must reserve, in a stable order:
    global, feature, plan, user, key, model, run."""
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
        _add(out, "run", identity.run, index.run, amounts)
    return tuple(out)


def _add(out: list[Hold], scope: str, ident: str | None, rules: Rules, amounts: Amounts) -> None:
    if not rules:
        return
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
