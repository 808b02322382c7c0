"""`tallygate demo`: offline, no keys. Starts the simulated provider and the gateway on
SQLite storage in a temporary directory (or --dir), replays a scripted workload with a
progress bar, prints the per-step, per-feature and per-user reports, the runs that looped
most and the what-if saving, and writes a self-contained HTML report."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from tallygate.demo.results import DemoResult

SecondsOpt = Annotated[float, typer.Option(
    "--seconds", min=1.0, max=600.0, help="How long the scripted workload runs.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Where to write the HTML report.")]
DirOpt = Annotated[Path | None, typer.Option(
    "--dir", help="Keep the storage (SQLite state and ledger) here instead of a temp dir.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Workload seed (same seed, same script).")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Policy file whose `models:` (prices, context windows) the demo uses "
    "(default ./tallygate.yaml when present); the demo keeps its own features and limits.")]


async def _run(directory: Path, seconds: float, seed: int, console: Console,
               models: dict[str, Any]) -> DemoResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tallygate.demo.results import collect
    from tallygate.demo.runner import run_workload
    from tallygate.demo.workload import build_workload

    total = build_workload(seed).total_calls
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("replaying the workload", total=total, status="")
        rejected = 0

        def advance(call: Any, outcome: str) -> None:
            nonlocal rejected
            rejected += outcome == "rejected"
            progress.update(task, advance=1, status=f"last: {call.step or call.feature:<12} "
                            f"refused (429): {rejected}")

        start = time.monotonic()
        tally, workload, store = await run_workload(directory, seconds, advance, seed, models)
    try:
        return await collect(store, directory, time.monotonic() - start, workload, tally,
                             models)
    finally:
        await store.close()


def _print_reports(result: DemoResult, console: Console) -> None:
    from tallygate.cli import report_render as render
    from tallygate.reports.runs import RunsReport

    render.usage(result.by_step)
    render.usage(result.by_feature)
    render.usage(result.by_user)
    runs = result.runs
    top = {r.run for r in runs.most_loops[:3]}
    render.runs(RunsReport(runs.since, runs.until, [r for r in runs.runs if r.run in top],
                           runs.costliest_steps, runs.most_loops))
    render.what_if(result.what_if)
    tally = result.tally
    for user in sorted({u for u, _ in tally.outcomes}):
        if tally.count("rejected", user):
            console.print(f"{user}: {tally.count('rejected', user)} calls refused with 429 "
                          f"budget_exceeded (plan budget used up), "
                          f"{tally.count('ok', user)} answered")
    from rich.markup import escape

    for line in tally.errors[:5]:
        console.print(f"[red]unexpected error[/red] {escape(line)}")


def demo(
    seconds: SecondsOpt = 20.0,
    out: OutOpt = Path("tallygate-report.html"),
    directory: DirOpt = None,
    json: JsonOpt = False,
    seed: SeedOpt = 7,
    config: ConfigOpt = None,
) -> None:
    """Run an offline demo: simulated provider, gateway, agents and chat users; reports."""
    from rich.console import Console

    from tallygate.config import load_policy
    from tallygate.demo.html import write_html
    from tallygate.demo.runner import demo_config_yaml
    from tallygate.errors import TallygateError
    from tallygate.reports.usage import dumps

    if not out.parent.resolve().is_dir():  # fail before the run, not after it
        print(f"tallygate: error: demo: no directory {out.parent} for --out", file=sys.stderr)
        raise typer.Exit(2)
    try:
        models = load_policy(config).models
    except TallygateError as exc:
        print(f"tallygate: error: demo: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    console = Console(stderr=json, highlight=False)
    if not console.is_terminal:  # piped output gets room for the tables' columns
        console = Console(stderr=json, highlight=False, width=200)
    with tempfile.TemporaryDirectory(prefix="tallygate-demo-") as tmp:
        where = Path(tmp) if directory is None else directory
        try:
            where.mkdir(parents=True, exist_ok=True)
            if directory is not None:
                (where / "tallygate.yaml").write_text(
                    demo_config_yaml(where.resolve(), models))
            result = asyncio.run(_run(where.resolve(), seconds, seed, console, models))
            html = write_html(result, out)
        except OSError as exc:
            print(f"tallygate: error: demo: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        result = _with_html(result, html)
        if json:
            from tallygate.demo.results import demo_json

            sys.stdout.buffer.write(dumps(demo_json(result)) + b"\n")
            sys.stdout.flush()
            return
        _print_reports(result, console)
        console.print(f"HTML report: [bold]{html}[/bold]")
        if directory is not None:
            console.print(f"storage kept in {where}: try `tallygate report --by run "
                          f"--config {where / 'tallygate.yaml'}`")


def _with_html(result: DemoResult, html: Path) -> DemoResult:
    from dataclasses import replace

    return replace(result, html=html)


def register(app: typer.Typer) -> None:
    """Add `tallygate demo`."""
    app.command("demo")(demo)
