"""`tallygate budgets`: every limit that applies (global, feature, plan, user, key, model,
run) with its used, reserved and remaining amounts and when its window resets, read from
the configured state store. The limits are enumerated from the policy with `holds_for`
(zero amounts) for each configured feature and each known identity (virtual keys)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tallygate.errors import ConfigError, InvalidRequest, TallygateError

if TYPE_CHECKING:
    from tallygate.config import Policy
    from tallygate.core.limits import Identity
    from tallygate.keys.model import VirtualKey
    from tallygate.types import Hold, LimitUsage

SCOPES = ("global", "feature", "plan", "user", "key", "model", "run")

Opt = typer.Option
UserOpt = Annotated[str | None, Opt("--user", help="Only limits that apply to this user.")]
KeyOpt = Annotated[str | None, Opt("--key", help="Only limits that apply to this key id.")]
FeatureOpt = Annotated[str | None, Opt("--feature", help="Only this feature.")]
PlanOpt = Annotated[str | None, Opt("--plan", help="The user's plan, when it has no key.")]
ModelOpt = Annotated[str | None, Opt("--model", help="Model whose model-scope limits to show.")]
RunOpt = Annotated[str | None, Opt("--run", help="Also the limits of this run id.")]
JsonOpt = Annotated[bool, Opt("--json", help="Print JSON instead of a table.")]
ConfigOpt = Annotated[Path | None, Opt("--config", help="Policy file (default ./tallygate.yaml).")]
StateOpt = Annotated[str | None, Opt("--state", help="State store URL; overrides the policy.")]
StoreOpt = Annotated[str | None, Opt("--store", help="Key store URL (default storage.ledger).")]


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


def _fail(message: str) -> typer.Exit:
    print(f"tallygate: error: {message}", file=sys.stderr)
    return typer.Exit(2)


# ------------------------------------------------------------------ which limits apply


def _identity(key: VirtualKey, run: str | None) -> Identity:
    from tallygate.config_models import LimitFields
    from tallygate.core.limits import Identity

    limits = LimitFields.model_validate(dict(key.limits)) if key.limits else None
    return Identity(key.id, key.user, key.plan, run, limits)


def identities(q: Query, keys: list[VirtualKey]) -> list[Identity]:
    """Who the limits are listed for: one key, a user's keys (or the user on --plan),
    or everyone with an active key plus the anonymous caller."""
    from tallygate.core.limits import Identity

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
    from tallygate.core.limits import Amounts, holds_for

    features = [q.feature] if q.feature else (list(policy.features) or ["default"])
    models = candidate_models(policy, q.model)
    zero = Amounts(0, 0, 0)
    seen: dict[tuple[str, bool], Hold] = {}
    for ident in identities(q, keys):
        for feature in features:
            for model in models or ["-"]:
                for hold in holds_for(policy, ident, feature=feature, model=model,
                                      amounts=zero):
                    if not models and hold.key.startswith("model:"):
                        continue
                    seen.setdefault((hold.key, hold.rolling), hold)
    return sorted(seen.values(), key=lambda h: (SCOPES.index(h.key.split(":", 1)[0]), h.key))


# ------------------------------------------------------------------ reading the state


def _sqlite_exists(url: str) -> bool:
    """False for a sqlite:/// URL whose file is missing (reading must not create it)."""
    from tallygate.ledger import sqlite_path

    path = sqlite_path(url)
    return path is None or path == ":memory:" or Path(path).is_file()


async def _keys(store_url: str) -> list[VirtualKey]:
    if not _sqlite_exists(store_url):
        return []  # nothing created yet: no keys
    from tallygate.keys.store import open_keystore

    store = await open_keystore(store_url)
    try:
        return await store.list(include_revoked=True)
    finally:
        await store.close()


async def read_budgets(policy: Policy, q: Query, state_url: str, store_url: str,
                       now: float) -> list[BudgetRow]:
    from tallygate.state import from_url

    if state_url.startswith("memory://"):
        raise ConfigError("the state store is memory://: limits live inside the running "
                          "gateway; point --state at a sqlite:// or redis:// store")
    if not _sqlite_exists(state_url):
        raise ConfigError(f"no state store at {state_url} (nothing reserved yet, or wrong "
                          "--state / --config?)")
    holds = applicable_holds(policy, q, await _keys(store_url))
    store = from_url(state_url)
    try:
        return [BudgetRow(h, await store.usage(h.key, limit=h.limit, window=h.window,
                                                rolling=h.rolling, now=now)) for h in holds]
    finally:
        await store.close()


# ------------------------------------------------------------------ output


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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


def row_json(row: BudgetRow, now: float) -> dict[str, Any]:
    from tallygate.core.limits import parse_key
    from tallygate.report import usd

    parsed = parse_key(row.hold.key)
    u = row.usage
    data: dict[str, Any] = {
        "key": row.hold.key, "scope": parsed.scope, "id": parsed.ident,
        "metric": parsed.metric.value, "window": parsed.window.value,
        "rolling": parsed.rolling, "limit": u.limit, "used": u.used, "reserved": u.reserved,
        "remaining": u.remaining, "reset_at": iso(u.reset_at),
        "reset_in_seconds": max(0, round(u.reset_at - now)),
    }
    if parsed.metric.value == "cost":  # cost amounts are nano-USD; USD is exact too
        for name in ("limit", "used", "reserved", "remaining"):
            data[f"{name}_usd"] = usd(data[name])
    return data


def _amount(metric: str, value: int) -> str:
    from tallygate.report import usd_display

    return usd_display(value) if metric == "cost" else f"{value:,}"


def render(rows: Iterable[BudgetRow], now: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Budgets and limits")
    for name in ("scope", "id", "limit on", "limit", "used", "reserved", "remaining", "resets"):
        table.add_column(name, justify="right" if name in
                         ("limit", "used", "reserved", "remaining") else "left")
    count = 0
    for row in rows:
        d = row_json(row, now)
        window = d["window"] + (" (rolling)" if d["rolling"] else "")
        cells = [_amount(d["metric"], d[k]) for k in ("limit", "used", "reserved", "remaining")]
        reset = f"in {human_delta(d['reset_in_seconds'])} ({d['reset_at']})"
        table.add_row(d["scope"], d["id"] or "-", f"{d['metric']}/{window}", *cells, reset)
        count += 1
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    console.print(table)
    if not count:
        console.print("no limits configured for this selection")


def budgets(
    user: UserOpt = None, key: KeyOpt = None, feature: FeatureOpt = None,
    plan: PlanOpt = None, model: ModelOpt = None, run: RunOpt = None,
    json: JsonOpt = False, config: ConfigOpt = None, state: StateOpt = None,
    store: StoreOpt = None,
) -> None:
    """Every limit that applies, with used / reserved / remaining and the reset time."""
    from tallygate.config import load_policy
    from tallygate.report import dumps

    now = time.time()
    try:
        policy = load_policy(config)
        q = Query(user, key, feature, plan, model, run)
        rows = asyncio.run(read_budgets(policy, q, state or policy.storage.state,
                                        store or policy.storage.ledger, now))
    except TallygateError as exc:
        raise _fail(exc.message) from None
    except OSError as exc:
        raise _fail(f"state store: {exc}") from None
    if json:
        out = {"now": iso(now), "limits": [row_json(r, now) for r in rows]}
        sys.stdout.buffer.write(dumps(out) + b"\n")
        sys.stdout.flush()
    else:
        render(rows, now)


def register(app: typer.Typer) -> None:
    """Add `tallygate budgets`."""
    app.command("budgets")(budgets)
