"""Assemble bench/RESULTS.md from the per-benchmark tables in bench/results/.

    python bench/collect.py

Each results file is written by its own benchmark with the command that produced it;
this only concatenates them under the summary in bench/summary.md."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["load", "overhead", "overhead_aiohttp", "stack", "soak", "server", "inprocess",
         "inprocess_ab", "stores", "extend", "streamed", "counting", "decide", "ledger",
         "keys", "observe", "library", "ci_gen", "sim", "demo", "dashboard"]


def main() -> None:
    parts = [(HERE / "summary.md").read_text().rstrip() + "\n"]
    for name in ORDER:
        text = (HERE / "results" / f"{name}.md").read_text().rstrip()
        if not text.startswith("#"):
            text = f"# {name.capitalize()}\n\n{text}"
        demoted = ["#" + line if line.startswith("#") else line for line in text.splitlines()]
        parts.append("\n".join(demoted))  # every heading one level down under the summary
    (HERE / "RESULTS.md").write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
