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


def _register() -> None:
    from tallygate.cli import budgets, check, demo, flags, gen, keys, report, serve, sim, text

    for module in (demo, serve, keys, flags, report, budgets, text, check, gen, sim):
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
