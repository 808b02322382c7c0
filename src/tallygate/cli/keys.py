"""`tallygate keys create|list|update|rotate|revoke`: against the configured storage, or
a running gateway's admin API with `--url` and `--admin-key` (env TALLYGATE_ADMIN_KEY)."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from tallygate.cli.tables import Column, FormatOpt, WideOpt, fit, output_format, show, write_csv
from tallygate.errors import InvalidRequest, TallygateError
from tallygate.units import minute_text

T = TypeVar("T")

StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="Key store URL (default: the policy's storage.ledger).")]
ConfigOpt = Annotated[str | None, typer.Option(
    "--config", help="Policy file (default ./tallygate.yaml, then built-in defaults).")]
UrlOpt = Annotated[str | None, typer.Option(
    "--url", help="A running gateway, e.g. http://127.0.0.1:8080 (uses its admin API).")]
AdminKeyOpt = Annotated[str | None, typer.Option(
    "--admin-key", envvar="TALLYGATE_ADMIN_KEY", show_envvar=True,
    help="The gateway's admin key (with --url).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ExpiresOpt = Annotated[str | None, typer.Option(
    "--expires", help="When the key stops working: 30d, 12h, 2027-01-31 or an ISO time.")]


def expiry(text: str) -> int:
    """`--expires` → unix seconds (a span counts from now)."""
    import time

    from tallygate.units import parse_when

    try:
        return int(parse_when(text, time.time(), ahead=True))
    except InvalidRequest as exc:
        raise InvalidRequest(f"--expires: {exc.message}") from None


class Target:
    """Where the keys live: a store URL, or a gateway URL plus admin key."""

    def __init__(self, store: str | None, config: str | None, url: str | None,
                 admin_key: str | None) -> None:
        self.store, self.config, self.url, self.admin_key = store, config, url, admin_key

    def policy(self) -> Any:
        from tallygate.config import load_policy

        return load_policy(self.config)

    def store_url(self) -> str:
        if self.store:
            return self.store
        return str(self.policy().storage.ledger)

    def with_store(self, action: Callable[[Any], Awaitable[T]]) -> T:
        from tallygate.keys import open_keystore

        async def run() -> T:
            store = await open_keystore(self.store_url())
            try:
                return await action(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One admin API call; errors become TallygateError with a one-line message."""
        if not self.admin_key:
            raise InvalidRequest("--url needs --admin-key or TALLYGATE_ADMIN_KEY.")
        assert self.url is not None
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url.rstrip("/") + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.admin_key}",
                     "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise TallygateError(f"gateway answered {exc.code}: {_error_text(exc)}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TallygateError(f"cannot reach the gateway at {self.url}: {reason}") from None

    def call_key(self, method: str, key_id: str, suffix: str, body: Any = None) -> Any:
        """`call()` on `/admin/keys/{key_id}{suffix}`; None when the gateway has no such
        key (404)."""
        path = f"/admin/keys/{urllib.parse.quote(key_id, safe='')}{suffix}"
        try:
            return self.call(method, path, body) or {}
        except TallygateError as exc:
            if "answered 404" in exc.message:
                return None
            raise


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read())["error"]
        return f"{error.get('message')} ({error.get('code')})"
    except (ValueError, KeyError, TypeError, OSError):
        return str(exc.reason)


def _fail(message: str) -> typer.Exit:
    print(f"tallygate: error: {message}", file=sys.stderr)
    return typer.Exit(2)


def _public(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "object"}



def create_key(target: Target, fields: dict[str, Any]) -> dict[str, Any]:
    if target.url:
        return _public(target.call("POST", "/admin/keys", fields))

    from tallygate.config.names import PolicyNames

    # The same check the admin API makes (config/names.py), against the local policy.
    PolicyNames(target.policy()).check_key(plan=fields["plan"], features=fields["features"],
                                           models=fields["models"])

    async def action(store: Any) -> dict[str, Any]:
        user, plan = fields.pop("user"), fields.pop("plan")
        key, secret = await store.create(user, plan, **fields)
        created: dict[str, Any] = key.to_public_dict() | {"key": secret}
        return created

    return target.with_store(action)


def list_keys(target: Target, include_revoked: bool) -> list[dict[str, Any]]:
    if target.url:
        path = "/admin/keys?all=true" if include_revoked else "/admin/keys"
        return [_public(k) for k in target.call("GET", path)["data"]]

    async def action(store: Any) -> list[dict[str, Any]]:
        return [k.to_public_dict() for k in await store.list(include_revoked)]

    return target.with_store(action)


def update_key(target: Target, key_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
    """The key after `changes` (the admin API's PATCH fields), or None when there is none."""
    if target.url:
        found = target.call_key("PATCH", key_id, "", changes)
        return None if found is None else _public(found)

    from tallygate.config.names import PolicyNames
    from tallygate.keys.requests import check_update

    # The same checks the admin API makes, against the local policy's names.
    checked = check_update(changes, PolicyNames(target.policy()))

    async def action(store: Any) -> dict[str, Any] | None:
        key = await store.update(key_id, **checked)
        return key.to_public_dict() if key is not None else None

    return target.with_store(action)


def rotate_key(target: Target, key_id: str) -> dict[str, Any] | None:
    """The key with its new secret, or None when there is no such key."""
    if target.url:
        found = target.call_key("POST", key_id, "/rotate", {})
        return None if found is None else _public(found)

    async def action(store: Any) -> dict[str, Any] | None:
        rotated = await store.rotate(key_id)
        if rotated is None:
            return None
        key, secret = rotated
        data: dict[str, Any] = key.to_public_dict() | {"key": secret}
        return data

    return target.with_store(action)


def revoke_key(target: Target, key_id: str) -> bool:
    if target.url:
        return target.call_key("DELETE", key_id, "") is not None

    async def action(store: Any) -> bool:
        return bool(await store.revoke(key_id))

    return target.with_store(action)


def _show_created(data: dict[str, Any], title: str = "New virtual key") -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel

    scope = []  # names come from the caller: escaped, never read as markup
    if data.get("features"):
        scope.append("features: " + escape(", ".join(data["features"])))
    if data.get("models"):
        scope.append("models: " + escape(", ".join(data["models"])))
    if data.get("limits"):
        scope.append("limits: " + ", ".join(f"{k}={v}" for k, v in data["limits"].items()))
    if data.get("expires_at"):
        scope.append(f"expires: {minute_text(data['expires_at'])} UTC")
    body = "\n".join([
        f"id:   {data['id']}", f"user: {escape(data['user'])}   plan: {escape(data['plan'])}",
        *scope, "",
        f"[bold]{data['key']}[/bold]", "",
        "[yellow]This secret is shown only once: store it now. "
        "tallygate keeps only its hash.[/yellow]",
    ])
    Console().print(Panel(body, title=title, expand=False), soft_wrap=True)


def _list_columns(include_revoked: bool) -> list[Column]:
    columns = [
        Column("id", lambda k: k["id"], number=False),
        Column("user", lambda k: k["user"], number=False),
        Column("plan", lambda k: k["plan"], number=False),
        Column("features", lambda k: ", ".join(k["features"]) or "all", 1, number=False),
        Column("models", lambda k: ", ".join(k["models"]) or "all", 2, number=False),
        Column("limits", lambda k: ", ".join(f"{n}={v}" for n, v in k["limits"].items())
               or "-", 2, number=False),
        Column("name", lambda k: k.get("name") or "", 3, number=False),
        Column("created", lambda k: minute_text(k["created_at"]), 4, number=False),
        Column("expires", lambda k: minute_text(k.get("expires_at")), 3, number=False),
    ]
    if include_revoked:
        columns.insert(3, Column("revoked", lambda k: minute_text(k["revoked_at"]), 1,
                                 number=False))
    return columns


def _show_list(keys: list[dict[str, Any]], include_revoked: bool, wide: bool) -> None:
    if not keys:
        show("No keys.")
        return
    show(fit(None, _list_columns(include_revoked), keys, wide=wide), wide=wide)


KEYS_CSV = ("id", "name", "user", "plan", "features", "models", "limits", "created_at",
            "revoked_at", "expires_at")


def _keys_csv(keys: list[dict[str, Any]]) -> None:
    """Lists and limits as compact JSON, so every value parses back exactly."""
    def cell(k: dict[str, Any], name: str) -> Any:
        value = k.get(name)
        return json.dumps(value, separators=(",", ":")) if isinstance(value, list | dict) \
            else value

    write_csv(KEYS_CSV, ([cell(k, n) for n in KEYS_CSV] for k in keys))


def _guard(action: Callable[[], T]) -> T:
    try:
        return action()
    except TallygateError as exc:
        raise _fail(exc.message) from None


keys_app = typer.Typer(help="Virtual keys: create, list, update, rotate, revoke.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `keys` command group to the main app."""
    app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def create_cmd(
    user: Annotated[str, typer.Option("--user", help="Owner of the key.")],
    plan: Annotated[str, typer.Option("--plan", help="The user's plan.")],
    feature: Annotated[list[str] | None, typer.Option(
        "--feature", help="Allowed feature (repeat; none = all).")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Allowed model (repeat; `*` wildcards; none = all).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="A label.")] = None,
    limit: Annotated[list[str] | None, typer.Option(
        "--limit", help="The key's own limit, e.g. tokens_per_day=50000 (repeat).")] = None,
    expires: ExpiresOpt = None,
    as_json: JsonOpt = False, store: StoreOpt = None, config: ConfigOpt = None,
    url: UrlOpt = None, admin_key: AdminKeyOpt = None,
) -> None:
    """Create a key; its secret is printed once."""
    from tallygate.keys.model import parse_limit_items

    target = Target(store, config, url, admin_key)

    def run() -> dict[str, Any]:
        fields: dict[str, Any] = {"user": user, "plan": plan, "name": name,
                                  "features": list(feature or []),
                                  "models": list(model or []),
                                  "limits": parse_limit_items(limit or [])}
        if expires is not None:
            fields["expires_at"] = expiry(expires)
        return create_key(target, fields)

    data = _guard(run)
    if as_json:
        print(json.dumps({"id": data["id"], "key": data["key"], **data}))
    else:
        _show_created(data)


@keys_app.command("list")
def list_cmd(
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")]
    = False,
    as_json: JsonOpt = False, fmt: FormatOpt = None, wide: WideOpt = False,
    store: StoreOpt = None, config: ConfigOpt = None,
    url: UrlOpt = None, admin_key: AdminKeyOpt = None,
) -> None:
    """List keys (never their secrets)."""
    kind = _guard(lambda: output_format(fmt, as_json))
    target = Target(store, config, url, admin_key)
    found = _guard(lambda: list_keys(target, include_revoked))
    if kind == "json":
        print(json.dumps({"keys": found}))
    elif kind == "csv":
        _keys_csv(found)
    else:
        _show_list(found, include_revoked, wide)


@keys_app.command("update")
def update_cmd(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (key_…).")],
    plan: Annotated[str | None, typer.Option("--plan", help="A new plan.")] = None,
    feature: Annotated[list[str] | None, typer.Option(
        "--feature", help="Allowed feature (repeat): replaces the list.")] = None,
    all_features: Annotated[bool, typer.Option(
        "--all-features", help="Allow every feature again.")] = False,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Allowed model (repeat; `*` wildcards): replaces the list.")] = None,
    all_models: Annotated[bool, typer.Option(
        "--all-models", help="Allow every model again.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="A new label.")] = None,
    no_name: Annotated[bool, typer.Option("--no-name", help="Clear the label.")] = False,
    limit: Annotated[list[str] | None, typer.Option(
        "--limit", help="The key's own limit (repeat): replaces its limits.")] = None,
    no_limits: Annotated[bool, typer.Option(
        "--no-limits", help="Drop the key's own limits (the plan's stay).")] = False,
    expires: ExpiresOpt = None,
    no_expiry: Annotated[bool, typer.Option(
        "--no-expiry", help="The key lasts until revoked.")] = False,
    as_json: JsonOpt = False, store: StoreOpt = None, config: ConfigOpt = None,
    url: UrlOpt = None, admin_key: AdminKeyOpt = None,
) -> None:
    """Change a key's plan, allow-lists, label, own limits or expiry; what is not given
    stays. The secret and the id stay, and so do the key's counters."""
    from tallygate.keys.model import parse_limit_items

    target = Target(store, config, url, admin_key)

    def run() -> dict[str, Any] | None:
        changes: dict[str, Any] = {}
        for field, given, clear, option in (
                ("features", feature or None, all_features, "--feature / --all-features"),
                ("models", model or None, all_models, "--model / --all-models"),
                ("name", name, no_name, "--name / --no-name"),
                ("limits", limit or None, no_limits, "--limit / --no-limits"),
                ("expires_at", expires, no_expiry, "--expires / --no-expiry")):
            if given is not None and clear:
                raise InvalidRequest(f"{option}: give one or the other.")
            if given is not None or clear:
                changes[field] = given
        if plan is not None:
            changes["plan"] = plan
        if not changes:
            raise InvalidRequest("Nothing to change: give --plan, --feature, --model, --name, "
                                 "--limit or --expires (or --all-features, --all-models, "
                                 "--no-name, --no-limits, --no-expiry).")
        for field in ("features", "models"):  # cleared: an empty list allows everything
            if field in changes:
                changes[field] = list(changes[field] or [])
        if "limits" in changes:
            changes["limits"] = parse_limit_items(changes["limits"] or [])
        if changes.get("expires_at") is not None:
            changes["expires_at"] = expiry(changes["expires_at"])
        return update_key(target, key_id, changes)

    data = _guard(run)
    if data is None:
        raise _fail(f"no key with id {key_id!r}")
    print(json.dumps(data) if as_json else _updated_line(data))


def _updated_line(data: dict[str, Any]) -> str:
    from tallygate.units import iso_seconds

    limits = ", ".join(f"{k}={v}" for k, v in (data.get("limits") or {}).items())
    expires = data.get("expires_at")
    return (f"Updated {data['id']}: plan {data['plan']}, features "
            f"{', '.join(data['features']) or 'all'}, models "
            f"{', '.join(data['models']) or 'all'}, own limits {limits or 'none'}, "
            f"expires {iso_seconds(expires) if expires else 'never'}.")


@keys_app.command("rotate")
def rotate_cmd(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (key_…).")],
    as_json: JsonOpt = False, store: StoreOpt = None, config: ConfigOpt = None,
    url: UrlOpt = None, admin_key: AdminKeyOpt = None,
) -> None:
    """A new secret for a key (printed once); the old one is refused from now on. The id,
    settings and counters stay."""
    target = Target(store, config, url, admin_key)
    data = _guard(lambda: rotate_key(target, key_id))
    if data is None:
        raise _fail(f"no key with id {key_id!r}")
    if as_json:
        print(json.dumps({"id": data["id"], "key": data["key"], **data}))
    else:
        _show_created(data, title="New secret")


@keys_app.command("revoke")
def revoke_cmd(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (key_…).")],
    as_json: JsonOpt = False, store: StoreOpt = None, config: ConfigOpt = None,
    url: UrlOpt = None, admin_key: AdminKeyOpt = None,
) -> None:
    """Revoke a key: refused by every gateway within about a second."""
    target = Target(store, config, url, admin_key)
    if not _guard(lambda: revoke_key(target, key_id)):
        raise _fail(f"no key with id {key_id!r}")
    print(json.dumps({"id": key_id, "revoked": True}) if as_json else f"Revoked {key_id}.")
