"""Processes opening one new SQLite file at the same moment all open it: switching to WAL
takes a lock SQLite does not wait for on the busy timeout, so without a retry about one
open in twenty failed with "database is locked" (`serve --workers N` on a new file,
scripts sharing a key store)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from tallygate.keys import open_keystore
from tallygate.ledger import open_ledger
from tallygate.state.sqlite import connect_state

PROCESSES, TRIALS = 6, 10


def _open_state(path: str) -> None:
    connect_state(path, 5000).close()


def _open_ledger(path: str) -> None:
    async def run() -> None:
        await (await open_ledger(f"sqlite:///{path}")).close()

    asyncio.run(run())


def _open_keys(path: str) -> None:
    async def run() -> None:
        await (await open_keystore(f"sqlite:///{path}")).close()

    asyncio.run(run())


def _at(start: float, opener: Any, path: str, results: Any) -> None:
    while time.time() < start:  # every process opens at the same instant
        pass
    try:
        opener(path)
        results.put("ok")
    except Exception as exc:  # the failure is the finding: carried to the test
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("opener", [_open_state, _open_ledger, _open_keys])
def test_processes_opening_a_new_file_together_all_open_it(tmp_path: Path, opener: Any) -> None:
    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    for trial in range(TRIALS):
        path, results = str(tmp_path / f"{trial}.db"), ctx.Queue()
        start = time.time() + 0.05
        procs = [ctx.Process(target=_at, args=(start, opener, path, results))
                 for _ in range(PROCESSES)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
        failures += [r for r in (results.get(timeout=5) for _ in procs) if r != "ok"]
    assert failures == []
