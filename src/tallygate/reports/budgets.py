"""Which limits apply to a caller, and how much of each is used: shared by
`tallygate budgets` and the gateway's `GET /admin/budgets`. The limits are enumerated
from the policy with `holds_for` (zero amounts) for each configured feature and each
known identity (virtual keys); their usage is read from the state store."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tallygate.config.models import key_rules
from tallygate.core.limits import Amounts, Identity, Rules, holds_for, parse_key
from tallygate.errors import InvalidRequest
from tallygate.units import iso_seconds, usd

if TYPE_CHECKING:
    from tallygate.config import Policy
    from tallygate.keys.model import VirtualKey
    from tallygate.state.base import StateStore
    from tallygate.types import Hold, LimitUsage

SCOPES = ("global", "feature", "plan", "user", "key", "model", "run", "step")


@dataclass(frozen=True, slots=True)
class Query:
    user: str | None = None
    key: str | None = None
    feature: str | None = None
    plan: str | None = None
    model: str | None = None
    run: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetRow:
    hold: Hold
    usage: LimitUsage

    @property
    def scope(self) -> str:
        return self.hold.key.split(":", 1)[0]


# ------------------------------------------------------------------ which limits apply


def key_limit_rules(key: VirtualKey) -> Rules | None:
    """A virtual key's own limits, as holds_for() takes them."""
    return key_rules(key.limits)


def _identity(key: VirtualKey, run: str | None) -> Identity:
    return Identity(key.id, key.user, key.plan, run, key_limit_rules(key))


def identities(q: Query, keys: list[VirtualKey]) -> list[Identity]:
    """Who the limits are listed for: one key, a user's keys (or the user on --plan),
    or everyone with an active key plus the anonymous caller."""
    active = [k for k in keys if k.active]
    if q.key is not None:
        found = [k for k in keys if k.id == q.key]
        if not found:
            raise InvalidRequest(f"no key with id {q.key!r} (see `tallygate keys list`)")
        return [_identity(found[0], q.run)]
    if q.user is not None:
        mine = [_identity(k, q.run) for k in active if k.user == q.user]
        if q.plan is not None or not mine:
            if q.plan is None:
                raise InvalidRequest(f"user {q.user!r} has no active key: pass --plan to say "
                                     "which plan's limits to show")
            mine.append(Identity(user=q.user, plan=q.plan, run=q.run))
        return mine
    return [Identity(run=q.run), *(_identity(k, q.run) for k in active)]


def candidate_models(policy: Policy, model: str | None) -> list[str]:
    """Models whose model-scope limits to list: --model, else the models the policy names
    (limits.model entries and, when limits.model.default exists, feature and tier models)."""
    if model is not None:
        return [model]
    named = [m for m in policy.limits.model if m != "default"]
    if "default" in policy.limits.model:
        tiers = policy.tiers
        for name in [*(f.model for f in policy.features.values()), *tiers.values()]:
            m = tiers.get(name[5:]) if name and name.startswith("tier:") else name
            if m and m not in named and m != "auto":
                named.append(m)
    return named


def applicable_holds(policy: Policy, q: Query, keys: list[VirtualKey]) -> list[Hold]:
    """Every limit that applies, once each, in scope order."""
    features = [q.feature] if q.feature else (list(policy.features) or ["default"])
    models = candidate_models(policy, q.model)
    zero = Amounts(0, 0, 0)
    seen: dict[tuple[str, bool], Hold] = {}
    for ident in identities(q, keys):
        for feature in features:
            for model in models or ["-"]:
                for hold in holds_for(policy.limit_index, ident, feature=feature, model=model,
                                      amounts=zero):
                    if not models and hold.key.startswith("model:"):
                        continue
                    seen.setdefault((hold.key, hold.rolling), hold)
    return sorted(seen.values(), key=lambda h: (SCOPES.index(h.key.split(":", 1)[0]), h.key))


async def budget_rows(policy: Policy, q: Query, store: StateStore, keys: list[VirtualKey],
                      now: float) -> list[BudgetRow]:
    """Every applicable limit with its usage, read from an open state store."""
    return [BudgetRow(h, await store.usage(h.key, limit=h.limit, window=h.window,
                                           rolling=h.rolling, now=now))
            for h in applicable_holds(policy, q, keys)]



def row_json(row: BudgetRow, now: float) -> dict[str, Any]:

    parsed = parse_key(row.hold.key)
    u = row.usage
    data: dict[str, Any] = {
        "key": row.hold.key, "scope": parsed.scope, "id": parsed.ident,
        "metric": parsed.metric.value, "window": parsed.window.value,
        "rolling": parsed.rolling, "limit": u.limit, "used": u.used, "reserved": u.reserved,
        "remaining": u.remaining,
        # A lifetime limit (window "run") never resets: both are null.
        "reset_at": None if math.isinf(u.reset_at) else iso_seconds(u.reset_at),
        "reset_in_seconds": None if math.isinf(u.reset_at) else max(0, round(u.reset_at - now)),
    }
    if parsed.metric.value == "cost":  # cost amounts are nano-USD; USD is exact too
        for name in ("limit", "used", "reserved", "remaining"):
            data[f"{name}_usd"] = usd(data[name])
    return data


def human_delta(seconds: float) -> str:
    """3725 → "1h 02m", 59 → "59s", 90061 → "1d 01h"."""
    s = max(0, int(seconds + 0.5))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"
