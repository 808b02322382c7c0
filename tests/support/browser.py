"""Headless Chromium for browser tests: Debian's `chromium` driven by Playwright for Python
(never Playwright's own browser download), each context in a fresh user-data dir, with
the flags that keep Chromium from reaching the network by itself."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("TALLYGATE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium_context(playwright: Any, **options: Any) -> Iterator[Any]:
    """A browser context (its own profile directory, removed afterwards)."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
    profile = tempfile.mkdtemp(prefix="tg-chromium-")
    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, headless=True, args=ARGS,
        viewport={"width": 1280, "height": 900}, **options)
    try:
        yield context
    finally:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot_dir(default: Path) -> Path:
    """Where the tests save their screenshots: $TALLYGATE_SCREENSHOTS (docs/img when the
    docs are refreshed), else the test's own temporary directory."""
    target = Path(os.environ.get("TALLYGATE_SCREENSHOTS") or default)
    target.mkdir(parents=True, exist_ok=True)
    return target
