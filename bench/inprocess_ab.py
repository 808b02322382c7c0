"""The in-process figures of two revisions in the same run: `bench/gateway_inprocess.py`
of a git revision (its own `src/` and `bench/`) and of this tree, alternating round by
round, so that a change (a move of files, a refactor) is judged against its own before on
the same machine at the same moment.

    python bench/inprocess_ab.py --baseline REV [--revision REV2] [--rounds 3]
        [--calls 3000] [--out bench/results/inprocess_ab.md]

`--revision` compares two revisions (e.g. a commit and its parent) instead of the baseline
and this tree. `--trend REV1 REV2 …` measures a series of revisions in the same rounds
(where along a history a cost came in).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a row of gateway_inprocess.py's table: | state | calls | mean µs | p50 µs | p99 µs |
ROW = re.compile(r"^\| (?P<name>[^|]+?) \| \d+ \| \d+ \| (?P<p50>\d+) \| \d+ \|$")


def export(rev: str, into: Path) -> Path:
    """`src/` and `bench/` of a git revision, unpacked under `into`."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src", "bench"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run(tree: Path, calls: int) -> dict[str, int]:
    """p50 µs per state row of one run of the tree's own in-process bench."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run([sys.executable, str(tree / "bench" / "gateway_inprocess.py"),
                          "--calls", str(calls)], env=env, check=True, capture_output=True,
                         text=True, cwd=tree, timeout=600).stdout
    found = {m["name"]: int(m["p50"]) for m in map(ROW.match, out.splitlines()) if m}
    if not found:
        raise RuntimeError(f"no figures in the output of {tree}:\n{out}")
    return found


def trend(revs: list[str], rounds: int, calls: int) -> str:
    """p50 per state for each revision, measured round-robin, against the first."""
    with tempfile.TemporaryDirectory(prefix="tg-ab-") as tmp:
        trees = [export(rev, Path(tmp) / f"r{i}") for i, rev in enumerate(revs)]
        found: list[list[dict[str, int]]] = [[] for _ in revs]
        for _ in range(rounds):
            for i, tree in enumerate(trees):
                found[i].append(run(tree, calls))
    names = [n for n in found[0][0] if all(n in f[0] for f in found)]
    medians = [{n: statistics.median(r[n] for r in f) for n in names} for f in found]
    lines = [f"Command: `python bench/inprocess_ab.py --trend {' '.join(revs)} --rounds "
             f"{rounds} --calls {calls}`; p50 µs of a call, median over the rounds, and "
             f"against `{revs[0]}`.", "",
             "| revision | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for rev, med in zip(revs, medians, strict=True):
        cells = [f"{med[n]:.0f} ({med[n] / medians[0][n]:.2f}×)" for n in names]
        lines.append(f"| `{rev}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trend", nargs="+", default=None, help="revisions, oldest first")
    parser.add_argument("--baseline", help="git revision to compare with")
    parser.add_argument("--revision", default=None, help="instead of this tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.trend:
        print(trend(args.trend, args.rounds, args.calls))
        return
    if not args.baseline:
        parser.error("give --baseline REV (or --trend REV …)")
    with tempfile.TemporaryDirectory(prefix="tg-ab-") as tmp:
        old = export(args.baseline, Path(tmp) / "baseline")
        new = export(args.revision, Path(tmp) / "revision") if args.revision else ROOT
        runs: dict[str, list[dict[str, int]]] = {"baseline": [], "now": []}
        for _ in range(args.rounds):
            runs["baseline"].append(run(old, args.calls))
            runs["now"].append(run(new, args.calls))
    against = f"`{args.revision}`" if args.revision else "this tree"
    command = " ".join(["python bench/inprocess_ab.py --baseline", args.baseline,
                        *(["--revision", args.revision] if args.revision else []),
                        "--rounds", str(args.rounds), "--calls", str(args.calls)])
    names = [n for n in runs["now"][0] if n in runs["baseline"][0]]
    lines = [
        f"# In-process: {against} against `{args.baseline}`, same run",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Each round runs `bench/gateway_inprocess.py` of the "
        "baseline (its own code and bench) and then of the other; p50 µs of a call, median "
        "over the rounds.",
        "",
        "| state | baseline p50 µs | other p50 µs | other vs baseline | per round |",
        "|---|---:|---:|---:|---|",
    ]
    for name in names:
        old_p50 = [r[name] for r in runs["baseline"]]
        new_p50 = [r[name] for r in runs["now"]]
        ratios = ", ".join(f"{n / o:.2f}×" for o, n in zip(old_p50, new_p50, strict=True))
        lines.append(f"| {name} | {statistics.median(old_p50)} | {statistics.median(new_p50)}"
                     f" | {statistics.median(new_p50) / statistics.median(old_p50):.2f}× "
                     f"| {ratios} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
