"""`tallygate check`: the CI gate on prompt files. Budgets come from the policy's
`check:` section (or pyproject's `[tool.tallygate.check]`), or from `PATHS --budget N`.
Exit 1 when a budget is broken, 0 otherwise, 2 on a usage or configuration error."""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tallygate.errors import InvalidRequest

if TYPE_CHECKING:
    from tallygate.ci.check import CheckReport

FormatOpt = Annotated[str, typer.Option(
    "--format", "-f", help="table | json | github (annotations + job summary) | junit.")]


def _growth(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        pct = Decimal(value.strip().rstrip("%"))
    except InvalidOperation:
        raise InvalidRequest(f"--max-growth {value!r}: expected a percentage such as 10") from None
    if not pct.is_finite() or pct < 0:
        raise InvalidRequest("--max-growth must be a percentage ≥ 0")
    return pct


def _walk(paths: list[str]) -> list[str]:
    files: list[str] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(str(p) for p in sorted(path.rglob("*"))
                         if p.is_file() and ".git" not in p.relative_to(path).parts)
        elif path.is_file():
            files.append(name)
        else:
            raise InvalidRequest(f"{name}: no such file or directory")
    return files


def check_cmd(
    paths: Annotated[list[str] | None, typer.Argument(
        help="Files or directories (recursive), with --budget. Without: the configured "
             "budgets.")] = None,
    budget: Annotated[int | None, typer.Option(
        "--budget", "-b", help="Max tokens per file, for PATHS.")] = None,
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Model whose tokenizer counts (the --budget form).")] = "gpt-4o",
    fmt: FormatOpt = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the json/junit report to this file (the table is "
                               "printed).")] = None,
    compare_to: Annotated[str | None, typer.Option(
        "--compare-to", help="Git ref to compare with: each file's token delta; growth "
                             "past max_growth fails.")] = None,
    max_growth: Annotated[str | None, typer.Option(
        "--max-growth", help="Percent growth allowed over --compare-to, for every budget "
                             "without its own max_growth.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="tallygate.yaml with a check: section, or a pyproject.toml "
                         "(default ./tallygate.yaml, then ./pyproject.toml).")] = None,
) -> None:
    """CI gate: exit 1 when a prompt file is over its token, cost or feature budget, or
    grew past max_growth since --compare-to."""
    from tallygate.ci import check_render as render

    fmt = "json" if as_json else fmt.strip().lower()
    if fmt not in render.FORMATS:
        raise InvalidRequest(f"--format {fmt!r}: expected one of {', '.join(render.FORMATS)}")
    if output is not None and fmt not in ("json", "junit"):
        raise InvalidRequest("--output writes a json or junit report: add --format json|junit")
    report, config_file = _report(paths, budget, model, _growth(max_growth), compare_to, config)
    _emit(report, fmt, output, config_file)
    if report.failed:
        raise typer.Exit(1)


def _report(paths: list[str] | None, budget: int | None, model: str,
            growth: Decimal | None, compare_to: str | None, config: Path | None
            ) -> tuple[CheckReport, str | None]:
    from tallygate.ci.check import adhoc_section, run_adhoc, run_check
    from tallygate.ci.check_source import find_check_source
    from tallygate.config import load_policy

    if paths:
        if budget is None:
            raise InvalidRequest("PATHS need --budget N (or give no paths to check the "
                                 "budgets in tallygate.yaml / pyproject.toml)")
        if budget < 0:
            raise InvalidRequest("--budget must be ≥ 0")
        policy = load_policy(config if config is not None and config.suffix != ".toml"
                             else None)
        section = adhoc_section(budget, model, growth)
        return run_adhoc(_walk(paths), section, policy, Path(), compare_to), None
    if budget is not None:
        raise InvalidRequest("--budget applies to PATHS: give the files or directories")
    source = find_check_source(config)
    section = source.section
    if growth is not None:
        section = section.model_copy(update={"max_growth": growth})
    return run_check(section, source.policy, source.base, source.file,
                     compare_to=compare_to), source.file


def _emit(report: CheckReport, fmt: str, output: Path | None, config_file: str | None
          ) -> None:
    from tallygate.ci import check_render as render

    if fmt == "github":
        text = _read_text(config_file)
        for line in render.github_annotations(report, config_file, text):
            typer.echo(line)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            render.append_step_summary(render.markdown_summary(report), summary)
        render.print_table(report)
        return
    if fmt == "table":
        render.print_table(report)
        return
    text = render.json_text(report) + "\n" if fmt == "json" else render.junit_xml(report)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"{output}: cannot write the report ({exc.strerror})") from exc
    render.print_table(report)
    typer.echo(f"{fmt} report written to {output}")


def _read_text(path: str | None) -> str:
    try:
        return Path(path).read_text(encoding="utf-8") if path else ""
    except (OSError, UnicodeDecodeError):
        return ""


def register(app: typer.Typer) -> None:
    from tallygate.cli.text import guard

    app.command("check")(guard(check_cmd))
