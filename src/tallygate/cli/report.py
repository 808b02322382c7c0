"""`tallygate report`, `tallygate report runs` and `tallygate what-if`: read the ledger named
by the policy (or `--ledger URL`, or a gateway with `--url`) and print tables that fit the
terminal, JSON or CSV (`--format`); `report --html FILE` writes the self-contained report."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from tallygate.cli.tables import FormatOpt, WideOpt
from tallygate.errors import ConfigError, TallygateError, driver_errors

T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Policy file (default ./tallygate.yaml).")
]
LedgerOpt = Annotated[
    str | None, typer.Option("--ledger", help="Ledger URL; overrides the policy.")
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="From: 24h, 7d, 2026-11-01 or ISO time.")
]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Until (exclusive), same forms.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --format json.")]
UrlOpt = Annotated[str | None, typer.Option(
    "--url", help="Ask a running gateway (its /admin/reports routes) instead of the ledger.")]
AdminKeyOpt = Annotated[str | None, typer.Option(
    "--admin-key", envvar="TALLYGATE_ADMIN_KEY", help="Admin key for --url.")]
ByOpt = Annotated[
    str, typer.Option("--by", help="feature|user|model|run|step|day|plan|key|provider")
]
HtmlOpt = Annotated[Path | None, typer.Option(
    "--html", help="Write the self-contained HTML report of the window to this file.")]


def _fail(message: str) -> typer.Exit:
    print(f"tallygate: error: {message}", file=sys.stderr)
    return typer.Exit(2)


def _run(work: Callable[[], Awaitable[T]]) -> T:
    """Run one command's coroutine; every failure becomes one line and exit code 2."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except TallygateError as exc:
        raise _fail(exc.message) from None
    except driver_errors() as exc:
        raise _fail(f"ledger: {exc}") from None


def _ledger_url(config: Path | None, ledger: str | None) -> str:
    if ledger:
        return ledger
    from tallygate.config import load_policy

    return load_policy(config).storage.ledger


def _ledger_url_checked(config: Path | None, ledger: str | None) -> str:
    try:
        url = _ledger_url(config, ledger)
        _check_exists(url)
    except TallygateError as exc:
        raise _fail(exc.message) from None
    return url


def _policy_models(config: Path | None) -> Any:
    from tallygate.config import load_policy

    return load_policy(config).models


def _check_exists(url: str) -> None:
    """Reading a report must not create an empty SQLite ledger at a mistyped path."""
    from tallygate.ledger import sqlite_path

    path = sqlite_path(url)
    if path is not None and path != ":memory:" and not Path(path).is_file():
        raise ConfigError(f"no ledger at {path} (nothing recorded yet, or wrong --ledger?)")


async def _open(url: str) -> Any:
    """The ledger, with the rows a dead writer left in its journal replayed first (a
    library script killed before it flushed): the report shows the truth."""
    from tallygate.ledger import default_journal_dir, open_ledger, replay_orphans

    store = await open_ledger(url)
    try:
        await replay_orphans(store, default_journal_dir(url))
    except BaseException:
        await store.close()
        raise
    return store


async def _on_ledger(url: str, query: Callable[[Any], Awaitable[T]]) -> T:
    """Open the ledger, run one report query on it, close it."""
    store = await _open(url)
    try:
        return await query(store)
    finally:
        await store.close()


def _window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    from tallygate.units import parse_when

    now = time.time()
    return (
        parse_when(since, now) if since else None,
        parse_when(until, now) if until else None,
    )


def _print_json(data: Any) -> None:
    from tallygate.reports.usage import dumps

    sys.stdout.buffer.write(dumps(data) + b"\n")
    sys.stdout.flush()


def _show(report: T, fmt: str, wide: bool, render: Callable[[T, bool], None],
          to_json: Callable[[T], Any], to_csv: Callable[[T], None]) -> None:
    """A report, as tables that fit (all columns with `wide`), JSON or CSV."""
    if fmt == "json":
        _print_json(to_json(report))
    elif fmt == "csv":
        to_csv(report)
    else:
        render(report, wide)


def _show_remote(data: Any, fmt: str, wide: bool, render: Callable[[T, bool], None],
                 from_json: Callable[[Any], T], to_csv: Callable[[T], None]) -> None:
    """A report a gateway sent as JSON: printed as received, or rendered."""
    if fmt == "json":
        _print_json(data)
    elif fmt == "csv":
        to_csv(from_json(data))
    else:
        render(from_json(data), wide)


def _format(fmt: str | None, json: bool) -> str:
    from tallygate.cli.tables import output_format

    try:
        return output_format(fmt, json)
    except TallygateError as exc:
        raise _fail(exc.message) from None


def report_main(
    ctx: typer.Context,
    by: ByOpt = "feature",
    since: SinceOpt = None,
    until: UntilOpt = None,
    json: JsonOpt = False,
    fmt: FormatOpt = None,
    wide: WideOpt = False,
    html: HtmlOpt = None,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
    url: UrlOpt = None,
    admin_key: AdminKeyOpt = None,
) -> None:
    """Usage, cost, calls, rejections, trims and cache savings, grouped by one dimension."""
    if ctx.invoked_subcommand is not None:
        return
    from tallygate.cli import report_render as render
    from tallygate.reports.usage import usage_from_json, usage_json, usage_report

    out = _format(fmt, json)
    if html is not None:
        if url is not None:
            raise _fail("--html reads the ledger itself: give --ledger or --config, not --url")
        _write_html(html, config, ledger, since, until)
        return
    if url is not None:
        _show_remote(_remote(url, admin_key, "/admin/reports",
                             {"by": by, "since": since, "until": until}),
                     out, wide, render.usage, usage_from_json, render.usage_csv)
        return
    url = _ledger_url_checked(config, ledger)

    async def work() -> Any:
        start, end = _window(since, until)
        return await _on_ledger(url, lambda s: usage_report(s, by, since=start, until=end))

    _show(_run(work), out, wide, render.usage, usage_json, render.usage_csv)


def _write_html(path: Path, config: Path | None, ledger: str | None, since: str | None,
                until: str | None) -> None:
    from tallygate.dashboard.report_html import ledger_report, write_report

    url = _ledger_url_checked(config, ledger)

    async def work() -> Any:
        start, end = _window(since, until)
        return await _on_ledger(url, lambda s: ledger_report(s, since=start, until=end))

    page = _run(work)
    try:
        write_report(page, path)
    except OSError as exc:
        raise _fail(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"HTML report: {path}")


def _remote(url: str, admin_key: str | None, path: str, params: dict[str, str | None]
            ) -> Any:
    """GET one of a running gateway's /admin/reports routes (None parameters left out)."""
    import urllib.parse

    from tallygate.cli.keys import Target

    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    try:
        return Target(None, None, url, admin_key).call("GET", f"{path}?{query}")
    except TallygateError as exc:
        raise _fail(exc.message) from None


def runs_main(
    run: Annotated[str | None, typer.Option("--run", help="Only this run (ticket) id.")] = None,
    owner: Annotated[str | None, typer.Option(
        "--owner", help="Only this owner's runs (user.NAME or key.ID).")] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    json: JsonOpt = False,
    fmt: FormatOpt = None,
    wide: WideOpt = False,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
    url: UrlOpt = None,
    admin_key: AdminKeyOpt = None,
) -> None:
    """Per-run steps with attempts (review loops), tokens and cost; costliest steps."""
    from tallygate.cli import report_render as render
    from tallygate.reports.runs import runs_from_json, runs_json, runs_report

    out = _format(fmt, json)
    if url is not None:
        _show_remote(_remote(url, admin_key, "/admin/reports/runs",
                             {"run": run, "owner": owner, "since": since, "until": until}),
                     out, wide, render.runs, runs_from_json, render.runs_csv)
        return
    ledger_url = _ledger_url_checked(config, ledger)

    async def work() -> Any:
        start, end = _window(since, until)
        return await _on_ledger(ledger_url,
                                lambda s: runs_report(s, run=run, owner=owner, since=start,
                                                      until=end))

    _show(_run(work), out, wide, render.runs, runs_json, render.runs_csv)


def what_if_main(
    model: Annotated[str, typer.Option("--model", help="Model whose prices to use.")],
    step: Annotated[str | None, typer.Option("--step", help="Workflow step to re-price.")]
    = None,
    feature: Annotated[str | None, typer.Option(
        "--feature", help="Or a feature to re-price.")] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    json: JsonOpt = False,
    fmt: FormatOpt = None,
    wide: WideOpt = False,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
    url: UrlOpt = None,
    admin_key: AdminKeyOpt = None,
) -> None:
    """Re-price the recorded calls of a step (or a feature) as if it had used another
    model."""
    from tallygate.cli import report_render as render
    from tallygate.reports.runs import what_if, what_if_from_json, what_if_json

    out = _format(fmt, json)
    if (step is None) == (feature is None):
        raise _fail("what-if needs --step STEP or --feature FEATURE (one of them)")
    if url is not None:
        _show_remote(_remote(url, admin_key, "/admin/reports/what-if",
                             {"step": step, "feature": feature, "model": model,
                              "since": since, "until": until}),
                     out, wide, render.what_if, what_if_from_json, render.what_if_csv)
        return
    ledger_url = _ledger_url_checked(config, ledger)

    async def work() -> Any:
        from tallygate.core.catalog import Catalog

        catalog = Catalog(_policy_models(config))
        target = catalog.get(model)
        window = _window(since, until)
        return await _on_ledger(ledger_url, lambda store: what_if(
            store, step, target, since=window[0], until=window[1], lookup=catalog.find,
            feature=feature))

    _show(_run(work), out, wide, render.what_if, what_if_json, render.what_if_csv)


def register(app: typer.Typer) -> None:
    """Add `report` (with its `runs` sub-command) and `what-if` to the CLI."""
    report_app = typer.Typer(
        help="Usage and cost reports from the ledger.", no_args_is_help=False,
        pretty_exceptions_enable=False,
    )
    report_app.callback(invoke_without_command=True)(report_main)
    report_app.command("runs")(runs_main)
    app.add_typer(report_app, name="report")
    app.command("what-if")(what_if_main)
