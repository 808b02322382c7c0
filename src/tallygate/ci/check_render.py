"""A check report as a table, JSON, GitHub workflow commands (+ a Markdown job summary)
or JUnit XML. Pure formatting: the command decides where each goes."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from tallygate.ci.check import CheckReport, EntryResult, FileResult, growth_pct
from tallygate.units import dollars

FORMATS = ("table", "json", "github", "junit")


def display_path(report: CheckReport, path: str) -> str:
    """A file as the user knows it: relative to the working directory when inside it."""
    if report.source == "--budget":
        return path
    full = report.base / path
    try:
        return full.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(full)


def _limit_text(entry: EntryResult, compared: bool) -> str:
    limits = entry.limits
    parts = []
    if limits.tokens:
        parts.append(f"{min(n for _, n in limits.tokens):,}")
    if limits.cost_nusd is not None:
        parts.append(f"${dollars(limits.cost_nusd)}")
    if limits.max_growth is not None and compared:
        parts.append(f"+{format(limits.max_growth.normalize(), 'f')}%")
    return " · ".join(parts) or "-"


def _delta_text(old: int | None, new: int, compared: bool) -> str:
    if not compared:
        return ""
    if old is None:
        return "new"
    if old == 0:
        return f"{new - old:+,}"
    return f"{new - old:+,} ({growth_pct(old, new)}%)"


def _status(problems: list[str], skipped: str | None = None) -> str:
    if skipped:
        return f"skipped ({skipped})"
    return "OVER" if problems else "ok"


def rows(report: CheckReport) -> list[dict[str, str]]:
    """One display row per file, removed file and entry total."""
    compared = report.compare_to is not None
    out: list[dict[str, str]] = []
    for entry in report.entries:
        for f in entry.files:
            out.append({"entry": entry.label, "file": display_path(report, f.path),
                        "tokens": "" if f.skipped else f"{f.tokens:,}" + ("" if f.exact
                                                                          else " (est.)"),
                        "limit": _limit_text(entry, compared) if entry.limits.per == "file" else "",
                        "delta": "" if f.skipped else _delta_text(f.old_tokens, f.tokens,
                                                                  compared),
                        "status": _status(f.problems, f.skipped)})
        for path in entry.removed:
            out.append({"entry": entry.label, "file": display_path(report, path),
                        "tokens": "0", "limit": "", "delta": "removed", "status": "ok"})
        if entry.limits.per == "entry" or len(entry.files) != 1:
            out.append({"entry": entry.label,
                        "file": f"(total of {len(entry.counted)} files)",
                        "tokens": f"{entry.total_tokens:,}",
                        "limit": (_limit_text(entry, compared)
                                  if entry.limits.per == "entry" else ""),
                        "delta": _delta_text(entry.old_total, entry.total_tokens, compared),
                        "status": _status(entry.problems)})
    return out


def _columns(report: CheckReport) -> list[str]:
    cols = ["entry", "file", "tokens", "limit"]
    return [*cols, "delta", "status"] if report.compare_to else [*cols, "status"]


def _where(report: CheckReport, entry: EntryResult, f: FileResult | None) -> str:
    return display_path(report, f.path) if f is not None else entry.label


def breach_lines(report: CheckReport) -> list[str]:
    return [f"OVER BUDGET: {_where(report, e, f)}: {m}" for e, f, m in report.breaches()]


def verdict_line(report: CheckReport) -> str:
    files = len({f.path for e in report.entries for f in e.counted})
    failed = len(report.breaches())
    vs = f" vs {report.compare_to}" if report.compare_to else ""
    if failed:
        return (f"tallygate check: {failed} problem(s) in {files} files, "
                f"{len(report.entries)} budgets{vs}")
    return f"tallygate check: {files} files within {len(report.entries)} budgets{vs}"


def print_table(report: CheckReport) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"token budgets ({report.source})")
    for col in _columns(report):
        table.add_column(col, justify="right" if col in ("tokens", "limit") else "left")
    for row in rows(report):
        cells = [escape(row[c]) for c in _columns(report)]
        if row["status"] == "OVER":
            cells[-1] = "[red]OVER[/red]"
        table.add_row(*cells)
    console = Console(highlight=False, width=max(100, Console().width))
    console.print(table)
    skipped = [(e, f) for e in report.entries for f in e.files if f.skipped]
    for _, f in skipped:
        console.print(f"skipped {f.skipped} file: {escape(display_path(report, f.path))}")
    for line in breach_lines(report):
        console.print(escape(line), soft_wrap=True)
    console.print(escape(verdict_line(report)), soft_wrap=True)


# ---------------------------------------------------------------- JSON


def to_json(report: CheckReport) -> dict[str, Any]:
    entries = []
    for e in report.entries:
        limits = e.limits
        entries.append({
            "name": e.label, "path": e.budget.path, "model": limits.model.name,
            "per": limits.per,
            "limits": {
                **{what: n for what, n in limits.tokens},
                "max_cost_usd": dollars(limits.cost_nusd) if limits.cost_nusd is not None else None,
                "max_growth": (format(limits.max_growth.normalize(), "f")
                               if limits.max_growth is not None else None),
            },
            "total_tokens": e.total_tokens, "total_cost_usd": dollars(e.total_cost_nusd),
            "old_total_tokens": e.old_total,
            "files": [_file_json(report, f) for f in e.files],
            "removed": [display_path(report, p) for p in e.removed],
            "problems": e.problems, "ok": not e.failed,
        })
    return {
        "ok": not report.failed, "source": report.source, "compare_to": report.compare_to,
        "entries": entries,
        "over": sorted({display_path(report, f.path) for _, f, _ in report.breaches()
                        if f is not None}),
        "breaches": [{"entry": e.label, "file": display_path(report, f.path) if f else None,
                      "message": m} for e, f, m in report.breaches()],
    }


def _file_json(report: CheckReport, f: FileResult) -> dict[str, Any]:
    return {"file": display_path(report, f.path), "kind": f.kind, "tokens": f.tokens,
            "exact": f.exact, "cost_usd": dollars(f.cost_nusd), "old_tokens": f.old_tokens,
            "delta": f.delta, "skipped": f.skipped, "problems": f.problems}


def json_text(report: CheckReport) -> str:
    return json.dumps(to_json(report), indent=2, ensure_ascii=False)


# ---------------------------------------------------------------- GitHub


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def entry_line(config_text: str, entry: EntryResult) -> int:
    """The line of the config that declares the entry (its glob), else 1."""
    path = entry.budget.path
    lines = config_text.splitlines()
    for form in (f'"{path}"', f"'{path}'", f"path: {path}", f"path = {path}", path):
        for number, line in enumerate(lines, 1):
            if form in line:
                return number
    return 1


def github_annotations(report: CheckReport, config_file: str | None,
                       config_text: str = "") -> list[str]:
    """`::error file=…,line=…,title=…::message` for every problem: a file's at its line 1,
    an entry's own at the line of the config file that declares it."""
    out = []
    for entry, f, message in report.breaches():
        target = display_path(report, f.path) if f is not None else config_file
        line = 1 if f is not None else entry_line(config_text, entry)
        props = [f"file={_escape_property(target)}", f"line={line}"] if target else []
        props.append(f"title={_escape_property('tallygate check: ' + entry.label)}")
        where = display_path(report, f.path) if f is not None else entry.label
        out.append(f"::error {','.join(props)}::{_escape_data(f'{where}: {message}')}")
    return out


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~])")


def _md(text: str) -> str:
    """A table cell: Markdown's markup characters escaped, on one line."""
    return _MD_SPECIAL.sub(r"\\\1", text.replace("\r", " ").replace("\n", " "))


def markdown_summary(report: CheckReport) -> str:
    """The job summary: a verdict line, the table, the problems."""
    icon = "❌" if report.failed else "✅"
    cols = _columns(report)
    lines = [f"### {icon} {_md(verdict_line(report))}", "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_md(r[c]) for c in cols) + " |" for r in rows(report)]
    problems = breach_lines(report)
    if problems:
        lines += ["", *(f"- {_md(p)}" for p in problems)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- JUnit

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _x(text: str) -> str:
    """XML 1.0 cannot hold control characters (or lone surrogates): replace them."""
    return _XML_BAD.sub("\ufffd", text)


def junit_xml(report: CheckReport) -> str:
    """One testsuite per budget entry, one testcase per file (plus the entry's total
    when it is the entry that is limited); a problem is a <failure>."""
    root = ET.Element("testsuites", name="tallygate check")
    total_tests = total_failures = 0
    for entry in report.entries:
        suite = ET.SubElement(root, "testsuite", name=_x(entry.label))
        tests = failures = skipped = 0
        cases: list[tuple[str, list[str], str | None]] = [
            (display_path(report, f.path), f.problems, f.skipped) for f in entry.files]
        if entry.limits.per == "entry" or entry.problems:
            cases.append((f"{entry.label} (total)", entry.problems, None))
        for name, problems, skip in cases:
            case = ET.SubElement(suite, "testcase", classname=_x(f"tallygate.check.{entry.label}"),
                                 name=_x(name), time="0")
            tests += 1
            if skip:
                skipped += 1
                ET.SubElement(case, "skipped", message=_x(skip))
            elif problems:
                failures += 1
                fail = ET.SubElement(case, "failure", message=_x(problems[0]), type="budget")
                fail.text = _x("\n".join(problems))
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", str(skipped))
        total_tests += tests
        total_failures += failures
    root.set("tests", str(total_tests))
    root.set("failures", str(total_failures))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def append_step_summary(markdown: str, target: str) -> None:
    """Append the summary to the job's summary file ($GITHUB_STEP_SUMMARY)."""
    with open(target, "a", encoding="utf-8") as out:
        out.write(markdown)
