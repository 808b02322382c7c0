"""How a benchmark hands back its markdown: printed, and written to `--out` when given;
the command and machine lines every result starts with; stopping the servers it ran."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path


def command_line(script: str) -> str:
    """How this run was started, as a result file quotes it."""
    return (f"python bench/{script} " + " ".join(sys.argv[1:])).strip()


def machine() -> str:
    return (f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}")


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    """Terminate the servers a benchmark started, and wait for each."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=timeout)


def publish(lines: Sequence[str], out: Path | None) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)
