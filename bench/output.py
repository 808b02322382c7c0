"""How a benchmark hands back its markdown: printed, and written to `--out` when given."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def publish(lines: Sequence[str], out: Path | None) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)
