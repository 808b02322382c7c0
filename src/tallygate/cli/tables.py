"""Terminal tables that fit, and the `--format table|json|csv` every report-like command
takes.

A table fits the console (its width, `COLUMNS`, 80 when piped) by choosing columns: each
has a priority, the compact default shows the figures that matter and drops the least
important ones until the table fits; `--wide` shows every column at its natural width.
Numbers are never cut: a number column is never narrowed (it folds, never ellipsises, if
the console is narrower than even the compact set). Every cell and title is a rich
`Text`, so markup in data (a run named `[/]`) is printed as it is.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tallygate.config.names import did_you_mean
from tallygate.errors import InvalidRequest

FORMATS = ("table", "json", "csv")
FormatOpt = Annotated[str | None, typer.Option(
    "--format", help="table (default), json or csv.")]
WideOpt = Annotated[bool, typer.Option("--wide", help="Every column, at its full width.")]
NAME_WIDTH = 24  # a name column folds at this width in the compact view


def output_format(fmt: str | None, json: bool = False) -> str:
    """The chosen format; `--json` is an alias of `--format json`."""
    if fmt is None:
        return "json" if json else "table"
    if fmt not in FORMATS:
        raise InvalidRequest(f"unknown format {fmt!r}{did_you_mean(fmt, FORMATS)}: use "
                             f"{', '.join(FORMATS)}")
    if json and fmt != "json":
        raise InvalidRequest(f"--json and --format {fmt} disagree: give one of them")
    return fmt


@dataclass(frozen=True, slots=True)
class Column:
    """`cell(row)` is the text shown; lower `priority` is kept longer (0 = always)."""

    name: str
    cell: Callable[[Any], str]
    priority: int = 0
    number: bool = True


def console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _build(title: str | None, columns: Sequence[Column], rows: Sequence[Any],
           footer: Any | None, wide: bool) -> Table:
    table = Table(title=Text(title) if title else None, box=box.SIMPLE_HEAD, pad_edge=False,
                  show_footer=footer is not None, title_justify="left",
                  collapse_padding=True)
    for col in columns:
        foot = Text(col.cell(footer)) if footer is not None else Text("")
        if col.number:
            table.add_column(Text(col.name), footer=foot, justify="right", no_wrap=True,
                             overflow="fold")
        else:
            table.add_column(Text(col.name), footer=foot, overflow="fold",
                             max_width=None if wide else NAME_WIDTH)
    for row in rows:
        table.add_row(*(Text(col.cell(row)) for col in columns))
    return table


def fit(title: str | None, columns: Sequence[Column], rows: Sequence[Any], *,
        footer: Any | None = None, wide: bool = False, width: int | None = None) -> Table:
    """The table with the columns that fit `width` (all of them with `wide`)."""
    chosen = list(columns)
    out = console()
    room = width or out.width
    while True:
        table = _build(title, chosen, rows, footer, wide)
        if wide:
            return table
        needed = out.measure(table, options=out.options.update_width(10_000)).maximum
        droppable = [c for c in chosen if c.priority > 0]
        if needed <= room or not droppable:
            return table
        chosen.remove(max(droppable, key=lambda c: (c.priority, chosen.index(c))))


def show(*parts: Table | str, wide: bool = False) -> None:
    """Print tables and lines; `--wide` widens the console so nothing is squeezed."""
    out = console()
    for part in parts:
        if isinstance(part, Table) and wide:
            need = out.measure(part, options=out.options.update_width(10_000)).maximum
            Console(highlight=False, width=max(out.width, need)).print(part)
        elif isinstance(part, Table):
            out.print(part)
        else:
            out.print(Text(part))


def write_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    sys.stdout.write(buffer.getvalue())
    sys.stdout.flush()
