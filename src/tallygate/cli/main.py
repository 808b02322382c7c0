"""The `tallygate` command. Each command group lives in its own module and registers
itself here; heavy imports happen inside the commands so `--help` stays fast."""

from __future__ import annotations

import sys

import typer

from tallygate.errors import TallygateError

app = typer.Typer(
    name="tallygate",
    help="Token budgets, limits and cost observability in front of every LLM call.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from tallygate import __version__

        typer.echo(f"tallygate {__version__}")
        raise typer.Exit


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Token budgets, limits and cost observability in front of every LLM call."""


def _register() -> None:
    from tallygate.cli import (
        budgets,
        check,
        dashboard,
        demo,
        doctor,
        flags,
        gen,
        init,
        keys,
        reload,
        report,
        serve,
        sim,
        text,
    )

    for module in (init, demo, serve, dashboard, reload, keys, flags, report, budgets, text,
                   check, gen, sim, doctor):
        module.register(app)


_register()


def run() -> None:
    """Console entry point: user errors become one clear line and exit code 2."""
    try:
        app()
    except TallygateError as exc:
        print(f"tallygate: error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
