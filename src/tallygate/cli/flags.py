"""`tallygate flags list|set|clear`: against the configured state store directly (the
policy's storage.state, or `--store URL`), or a running gateway's admin API with
`--url` and `--admin-key`. Gateways sharing the store apply a change within a second."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Annotated, Any

import typer

from tallygate.cli.keys import AdminKeyOpt, ConfigOpt, JsonOpt, Target, UrlOpt
from tallygate.errors import InvalidRequest

StateOpt = Annotated[str | None, typer.Option(
    "--store", help="State store URL (default: the policy's storage.state).")]

flags_app = typer.Typer(help="Feature flags: switch features on/off without a restart.",
                        no_args_is_help=True)


def _policy(config: str | None) -> Any:
    from tallygate.config import load_policy

    return load_policy(config)


def _with_store(store_url: str | None, config: str | None, action: Any) -> Any:
    """Run `action` ("list", ("set", name, on) or ("clear", name)) on the state store.
    The policy is always read: it names the features a flag may switch."""
    from tallygate.config.names import PolicyNames
    from tallygate.reports.flags import flag_list
    from tallygate.state import from_url

    policy = _policy(config)
    url = store_url or str(policy.storage.state)
    static = {n: policy.flag(n) for n in {*policy.features, *policy.flags}}
    if action != "list":
        PolicyNames(policy).check_flag(action[1])  # a typo is refused before any write

    async def run() -> Any:
        store = from_url(url)
        try:
            if action == "list":
                return await flag_list(store, static)
            if action[0] == "clear":
                name = action[1]
                cleared = await store.clear_flag(name)
                return {"feature": name, "on": policy.flag(name), "source": "policy",
                        "cleared": cleared}
            _, name, on = action
            await store.set_flag(name, on)
            return {"feature": name, "on": on, "source": "runtime"}
        finally:
            await store.close()

    return asyncio.run(run())


def _flag_path(feature: str) -> str:
    return f"/admin/flags/{urllib.parse.quote(feature, safe='')}"


def list_flags(store: str | None, config: str | None, url: str | None,
               admin_key: str | None) -> list[dict[str, Any]]:
    if url:
        return list(Target(None, config, url, admin_key).call("GET", "/admin/flags")["data"])
    return list(_with_store(store, config, "list"))


def set_flag(feature: str, on: bool, store: str | None, config: str | None, url: str | None,
             admin_key: str | None) -> dict[str, Any]:
    from tallygate.reports.flags import check_feature_name

    check_feature_name(feature)
    if url:  # the gateway checks the name against its own policy
        return dict(Target(None, config, url, admin_key).call("PUT", _flag_path(feature),
                                                              {"on": on}))
    return dict(_with_store(store, config, ("set", feature, on)))


def clear_flag(feature: str, store: str | None, config: str | None, url: str | None,
               admin_key: str | None) -> dict[str, Any]:
    from tallygate.reports.flags import check_feature_name

    check_feature_name(feature)
    if url:
        return dict(Target(None, config, url, admin_key).call("DELETE", _flag_path(feature)))
    return dict(_with_store(store, config, ("clear", feature)))


@flags_app.command("list")
def list_command(store: StateOpt = None, config: ConfigOpt = None, url: UrlOpt = None,
                 admin_key: AdminKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Every feature flag and whether it is on."""
    flags = list_flags(store, config, url, admin_key)
    if as_json:
        print(json.dumps({"flags": flags}))
        return
    for flag in flags:
        state = "on" if flag["on"] else "off"
        print(f"{flag['feature']:<32} {state:<4} ({flag.get('source', 'runtime')})")


@flags_app.command("set")
def set_command(
    feature: Annotated[str, typer.Argument(help="The feature's name.")],
    state: Annotated[str, typer.Argument(help="on or off")],
    store: StateOpt = None, config: ConfigOpt = None, url: UrlOpt = None,
    admin_key: AdminKeyOpt = None,
) -> None:
    """Switch a feature on or off on every gateway sharing the state store."""
    word = state.strip().lower()
    if word not in ("on", "off"):
        raise InvalidRequest(f"expected on or off, not {state[:16]!r}")
    done = set_flag(feature, word == "on", store, config, url, admin_key)
    print(f"{done['feature']}: {'on' if done['on'] else 'off'}")


@flags_app.command("clear")
def clear_command(
    feature: Annotated[str, typer.Argument(help="The feature's name.")],
    store: StateOpt = None, config: ConfigOpt = None, url: UrlOpt = None,
    admin_key: AdminKeyOpt = None,
) -> None:
    """Forget the run-time flag: the feature is on or off as the policy says."""
    done = clear_flag(feature, store, config, url, admin_key)
    state = "on" if done["on"] else "off"
    print(f"{done['feature']}: {state} (policy)")


def register(app: typer.Typer) -> None:
    app.add_typer(flags_app, name="flags")
