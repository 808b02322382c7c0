"""The blocking-call guard every gateway test runs under can fail: tallygate code reading
a file on an event loop is caught, the same read off the loop is not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from blockbuster import BlockingError

from tallygate.config.policy import load_policy

POLICY = "features:\n  chat:\n    max_input: 100\n"


def test_a_file_read_on_the_loop_fails(tmp_path: Path) -> None:
    path = tmp_path / "tallygate.yaml"
    path.write_text(POLICY)

    async def on_loop() -> None:
        load_policy(path)

    with pytest.raises(BlockingError, match=r"open|read|stat"):
        asyncio.run(on_loop())


def test_the_same_read_in_a_thread_passes(tmp_path: Path) -> None:
    path = tmp_path / "tallygate.yaml"
    path.write_text(POLICY)

    async def off_loop() -> None:
        policy = await asyncio.to_thread(load_policy, path)
        assert "chat" in policy.features

    asyncio.run(off_loop())
