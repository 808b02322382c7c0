"""`tallygate budgets`: every limit that applies (global, feature, plan, user, key, model,
run) with its used, reserved and remaining amounts and when its window resets — read from
the configured state store, or from a running gateway (`--url`, GET /admin/budgets).
Which limits apply is worked out in tallygate/budgets.py."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tallygate.cli.tables import Column, FormatOpt, WideOpt, fit, output_format, show, write_csv
from tallygate.errors import ConfigError, TallygateError
from tallygate.reports.budgets import BudgetRow, Query, budget_rows, human_delta, row_json
from tallygate.units import iso_seconds

if TYPE_CHECKING:
    from tallygate.config import Policy
    from tallygate.keys.model import VirtualKey

Opt = typer.Option
UserOpt = Annotated[str | None, Opt("--user", help="Only limits that apply to this user.")]
KeyOpt = Annotated[str | None, Opt("--key", help="Only limits that apply to this key id.")]
FeatureOpt = Annotated[str | None, Opt("--feature", help="Only this feature.")]
PlanOpt = Annotated[str | None, Opt("--plan", help="The user's plan, when it has no key.")]
ModelOpt = Annotated[str | None, Opt("--model", help="Model whose model-scope limits to show.")]
RunOpt = Annotated[str | None, Opt("--run", help="Also the limits of this run id.")]
JsonOpt = Annotated[bool, Opt("--json", help="Same as --format json.")]
ConfigOpt = Annotated[Path | None, Opt("--config", help="Policy file (default ./tallygate.yaml).")]
StateOpt = Annotated[str | None, Opt("--state", help="State store URL; overrides the policy.")]
StoreOpt = Annotated[str | None, Opt("--store", help="Key store URL (default storage.ledger).")]
UrlOpt = Annotated[str | None, Opt("--url", help="Ask a running gateway instead (admin API).")]
AdminKeyOpt = Annotated[str | None, Opt("--admin-key", envvar="TALLYGATE_ADMIN_KEY",
                                        help="Admin key for --url.")]


def _fail(message: str) -> typer.Exit:
    print(f"tallygate: error: {message}", file=sys.stderr)
    return typer.Exit(2)



# ------------------------------------------------------------------ reading the state


def _sqlite_exists(url: str) -> bool:
    """False for a sqlite:/// URL whose file is missing (reading must not create it)."""
    from tallygate.ledger import sqlite_path

    path = sqlite_path(url)
    return path is None or path == ":memory:" or Path(path).is_file()


async def _keys(store_url: str) -> list[VirtualKey]:
    if not _sqlite_exists(store_url):
        return []  # nothing created yet: no keys
    from tallygate.keys import open_keystore

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
    keys = await _keys(store_url)
    store = from_url(state_url, run_ttl=policy.storage.run_ttl)
    try:
        return await budget_rows(policy, q, store, keys, now)
    finally:
        await store.close()


# ------------------------------------------------------------------ output


def _amount(metric: str, value: int) -> str:
    from tallygate.units import usd_display

    return usd_display(value) if metric == "cost" else f"{value:,}"


def _figure(name: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda d: _amount(d["metric"], d[name])


def _resets_in(d: Mapping[str, Any]) -> str:
    """A lifetime limit (window "run") never resets: its reset is null in the JSON."""
    seconds = d["reset_in_seconds"]
    return "never (run)" if seconds is None else human_delta(seconds)


def _columns() -> list[Column]:
    amount = _figure
    return [
        Column("scope", lambda d: d["scope"], number=False),
        Column("id", lambda d: d["id"] or "-", number=False),
        Column("limit on", lambda d: f"{d['metric']}/{d['window']}"
               + (" (rolling)" if d["rolling"] else ""), number=False),
        Column("limit", amount("limit"), 1),
        Column("used", amount("used")),
        Column("remaining", amount("remaining")),
        Column("resets in", _resets_in),
        Column("reserved", amount("reserved"), 2),
        Column("resets at", lambda d: d["reset_at"] or "never", 3, number=False),
    ]


def render(rows: Iterable[Mapping[str, Any]], wide: bool = False) -> None:
    """The table, from the JSON rows (local or from a gateway's /admin/budgets)."""
    found = list(rows)
    table = fit("Budgets and limits", _columns(), found, wide=wide)
    show(table, *([] if found else ["no limits configured for this selection"]), wide=wide)


BUDGET_CSV = ("key", "scope", "id", "metric", "window", "rolling", "limit", "used",
              "reserved", "remaining", "reset_at", "reset_in_seconds", "limit_usd",
              "used_usd", "reserved_usd", "remaining_usd")


def render_csv(rows: Iterable[Mapping[str, Any]]) -> None:
    write_csv(BUDGET_CSV, ([d.get(name) for name in BUDGET_CSV] for d in rows))


def budgets(
    user: UserOpt = None, key: KeyOpt = None, feature: FeatureOpt = None,
    plan: PlanOpt = None, model: ModelOpt = None, run: RunOpt = None,
    json: JsonOpt = False, fmt: FormatOpt = None, wide: WideOpt = False,
    config: ConfigOpt = None, state: StateOpt = None,
    store: StoreOpt = None, url: UrlOpt = None, admin_key: AdminKeyOpt = None,
) -> None:
    """Every limit that applies, with used / reserved / remaining and the reset time."""
    from tallygate.reports.usage import dumps

    q = Query(user, key, feature, plan, model, run)
    try:
        kind = output_format(fmt, json)
        out = _remote(url, admin_key, q) if url else _local(q, config, state, store)
    except TallygateError as exc:
        raise _fail(exc.message) from None
    except OSError as exc:
        raise _fail(f"state store: {exc}") from None
    if kind == "json":
        sys.stdout.buffer.write(dumps(out) + b"\n")
        sys.stdout.flush()
    elif kind == "csv":
        render_csv(out["limits"])
    else:
        render(out["limits"], wide)


def _local(q: Query, config: Path | None, state: str | None,
           store: str | None) -> dict[str, Any]:
    from tallygate.config import load_policy

    now = time.time()
    policy = load_policy(config)
    rows = asyncio.run(read_budgets(policy, q, state or policy.storage.state,
                                    store or policy.storage.ledger, now))
    return {"now": iso_seconds(now), "limits": [row_json(r, now) for r in rows]}


def _remote(url: str, admin_key: str | None, q: Query) -> dict[str, Any]:
    import urllib.parse

    from tallygate.cli.keys import Target

    params = {k: v for k, v in vars_of(q).items() if v is not None}
    path = "/admin/budgets" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    data: dict[str, Any] = Target(None, None, url, admin_key).call("GET", path)
    return data


def vars_of(q: Query) -> dict[str, str | None]:
    return {"user": q.user, "key": q.key, "feature": q.feature, "plan": q.plan,
            "model": q.model, "run": q.run}


def register(app: typer.Typer) -> None:
    """Add `tallygate budgets`."""
    app.command("budgets")(budgets)
