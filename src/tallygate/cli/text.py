"""`tallygate count` and `chunk`: token counts of files for people and CI (`check` is
cli/check.py).

Errors are TallygateError subclasses; cli/main.py's run() prints them as one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tallygate.errors import InvalidRequest, TallygateError

DEFAULT_MODEL = "gpt-4o"

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model whose tokenizer counts.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Policy file whose `models:` overrides apply "
                 "(default ./tallygate.yaml if present)."),
]


def _model(name: str, config: Path | None) -> Any:
    """The model's catalog entry, with the policy's `models:` overrides (local models)."""
    from tallygate.config import load_policy
    from tallygate.core.catalog import Catalog, resolve_model

    if config is None and not Path("tallygate.yaml").is_file():
        return resolve_model(name)
    return Catalog(load_policy(config).models).get(name)


def _read_bytes(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    path = Path(name)
    if not path.is_file():
        raise InvalidRequest(f"{name}: no such file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"{name}: cannot read ({exc.strerror})") from exc


def count_source(name: str, raw: bytes, model: Any) -> dict[str, Any]:
    """One row of `count`: a chat JSON counts as a request, anything else as text."""
    from tallygate.ci.sources import count_bytes
    from tallygate.core.catalog import resolve_model

    info = resolve_model(model)
    result = count_bytes(raw, info)
    return {
        "file": name,
        "kind": result.kind,
        "tokens": result.tokens,
        "exact": result.exact,
        "encoding": result.encoding,
        "model": info.name,
    }


def _print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    table.add_column("file")
    table.add_column("kind")
    table.add_column("tokens", justify="right")
    table.add_column("exact")
    for row in rows:
        table.add_row(escape(row["file"]), row["kind"], f"{row['tokens']:,}",
                      "yes" if row["exact"] else "est.")  # a file named "[/]" is a name
    Console(highlight=False).print(table)


def count_cmd(
    files: Annotated[list[str] | None, typer.Argument(help="Files, or - for stdin.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Token counts of text files or chat JSON files (stdin with -)."""
    names = files or ["-"]
    info = _model(model, config)
    rows = [count_source(n, _read_bytes(n), info) for n in names]
    if as_json:
        typer.echo(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
    elif len(rows) == 1:
        row = rows[0]
        note = "" if row["exact"] else " (estimate, upper bound)"
        typer.echo(f"{row['tokens']} tokens ({row['model']}, {row['encoding']}){note}")
    else:
        _print_table(rows, f"tokens ({model})")


def chunk_cmd(
    file: Annotated[str, typer.Argument(help="Text file, or - for stdin.")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Budget per piece.")],
    model: ModelOpt = DEFAULT_MODEL,
    out: Annotated[Path | None, typer.Option("--out", help="Write pieces here.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Split a file into pieces of at most --max-tokens tokens."""
    from tallygate.core.chunk import chunk
    from tallygate.core.tokens import count_text

    info = _model(model, config)
    text = _read_bytes(file).decode("utf-8", errors="replace")
    pieces = chunk(text, max_tokens, info)
    if out is None:
        for i, piece in enumerate(pieces, 1):
            n = count_text(piece, info).tokens
            typer.echo(f"----- piece {i}/{len(pieces)} ({n} tokens) -----")
            typer.echo(piece)
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        width = max(4, len(str(len(pieces))))
        for i, piece in enumerate(pieces, 1):
            (out / f"piece-{i:0{width}d}.txt").write_text(piece, encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"{out}: cannot write pieces ({exc.strerror})") from exc
    typer.echo(f"{len(pieces)} pieces written to {out}")


def register(app: typer.Typer) -> None:
    app.command("count")(guard(count_cmd))
    app.command("chunk")(guard(chunk_cmd))


def guard(fn: Any) -> Any:
    """Keep typer's signature; turn stray OS/Unicode errors into TallygateError lines."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TallygateError:
            raise
        except (OSError, UnicodeError) as exc:
            raise InvalidRequest(str(exc)) from exc

    return wrapper
