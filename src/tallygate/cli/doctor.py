"""`tallygate doctor`: is this machine ready to `serve` this policy? One line per check:
the policy is valid and its secrets are set, the state store and the ledger answer (and
what a restart of the state store would forget), each provider answers over HTTP, and
the clock agrees with the providers' `Date` (windows are calendar windows: a skewed
clock resets budgets at the wrong time).
Exit code 1 when a check fails; warnings alone exit 0."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from tallygate.errors import TallygateError

Status = Literal["ok", "warn", "fail"]
MAX_SKEW = 30.0  # seconds between this clock and a provider's Date header
PROBE_TIMEOUT = 5.0


@dataclass
class Check:
    status: Status
    what: str
    detail: str


async def _state(policy: Any) -> Check:
    from tallygate.cli.listen import redact
    from tallygate.state import from_url, restart_warning

    url = policy.storage.state
    try:
        store = from_url(url)
        try:
            await store.flags_version()
        finally:
            await store.close()
        warning = await restart_warning(url)
    except TallygateError as exc:
        return Check("fail", "state store", f"{redact(url)}: {exc.message}")
    if warning:
        return Check("warn", "state store", f"{redact(url)}: {warning}")
    return Check("ok", "state store", redact(url))


async def _ledger(policy: Any) -> Check:
    from tallygate.cli.listen import redact
    from tallygate.ledger import open_ledger

    url = policy.storage.ledger
    try:
        ledger = await open_ledger(url)
        await ledger.close()
    except TallygateError as exc:
        return Check("fail", "ledger", exc.message)
    return Check("ok", "ledger", redact(url))


async def _provider(session: Any, name: str, provider: Any) -> tuple[Check, float | None]:
    """GET the provider's model list: any HTTP answer means reachable."""
    import aiohttp

    from tallygate.providers.base import adapter_for

    base = provider.base_url.rstrip("/")
    headers = dict(provider.headers)
    try:
        secret = provider.api_key.get_secret_value() if provider.api_key else ""
    except TallygateError as exc:
        return Check("fail", f"provider {name}", exc.message), None
    adapter = adapter_for(provider.protocol)
    url = adapter.upstream_url(base, "models")
    headers |= adapter.upstream_headers(secret, {})
    started = time.time()
    try:
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            status, date = resp.status, resp.headers.get("date")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        return Check("fail", f"provider {name}", f"{base}: unreachable ({reason})"), None
    skew = _skew(date, (started + time.time()) / 2)
    if status in (401, 403):
        return Check("warn", f"provider {name}", f"{base}: answers, but refuses the key "
                     f"(HTTP {status})"), skew
    kind: Status = "ok" if status < 400 else "warn"
    return Check(kind, f"provider {name}", f"{base}: HTTP {status}"), skew


def _skew(date: str | None, now: float) -> float | None:
    if not date:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    return now - parsed.timestamp()


async def _providers(policy: Any) -> tuple[list[Check], list[float]]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        found = await asyncio.gather(*(
            _provider(session, name, p) for name, p in sorted(policy.providers.items())))
    return [c for c, _ in found], [s for _, s in found if s is not None]


def _clock(skews: list[float]) -> Check:
    if not skews:
        return Check("warn", "clock", "no provider answered with a Date header to compare")
    worst = max(skews, key=abs)
    if abs(worst) > MAX_SKEW:
        return Check("fail", "clock", f"{worst:+.0f} s from the providers' clocks: "
                     "budgets would reset at the wrong time (sync with NTP)")
    return Check("ok", "clock", f"{worst:+.1f} s from the providers' clocks")


async def diagnose(policy: Any, source: str) -> list[Check]:
    from tallygate.config.models import unset_secrets

    checks = [Check("ok", "policy", source)]
    checks += [Check("fail", "secret", f"{s.where}: environment variable {s.variable} is "
                     "not set") for s in unset_secrets(policy)]
    checks += [await _state(policy), await _ledger(policy)]
    provider_checks, skews = await _providers(policy)
    if not provider_checks:
        provider_checks = [Check("warn", "providers", "none configured: calls cannot go out")]
    return [*checks, *provider_checks, _clock(skews)]


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(
        config: Annotated[Path | None, typer.Option(
            "--config", help="Policy file (default ./tallygate.yaml, then built-in defaults)."
        )] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Check the policy, the secrets, the stores, the providers and the clock."""
        from tallygate.config import DEFAULT_PATH, load_policy

        try:
            policy = load_policy(config)
        except TallygateError as exc:
            checks = [Check("fail", "policy", exc.message)]
        else:
            where = config or (Path(DEFAULT_PATH) if Path(DEFAULT_PATH).is_file() else None)
            checks = asyncio.run(diagnose(policy, str(where or "built-in defaults")))
        if as_json:
            typer.echo(json.dumps({"checks": [asdict(c) for c in checks]}))
        else:
            for check in checks:
                typer.echo(f"{check.status:<5}{check.what:<20}{check.detail}")
        if any(c.status == "fail" for c in checks):
            raise typer.Exit(1)
