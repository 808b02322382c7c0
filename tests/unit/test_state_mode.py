"""storage.state_mode: which SQLite store a process opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from tallygate.config import Policy
from tallygate.runtime import open_policy_state
from tallygate.state.memory import MemoryStore
from tallygate.state.sqlite import SqliteStore
from tallygate.state.sqlite_owner import OwnedSqliteStore


@pytest.mark.parametrize(("mode", "sole", "expected"), [
    ("auto", True, OwnedSqliteStore),  # a one-worker `serve`
    ("auto", False, SqliteStore),  # the library, several workers, the CLI
    ("owner", False, OwnedSqliteStore),
    ("shared", True, SqliteStore),
])
async def test_mode_picks_the_store(tmp_path: Path, mode: str, sole: bool,
                                    expected: type) -> None:
    policy = Policy.model_validate(
        {"storage": {"state": f"sqlite:///{tmp_path}/s.db", "state_mode": mode}})
    store = await open_policy_state(policy, sole_process=sole)
    assert type(store) is expected
    await store.close()


async def test_memory_state_ignores_the_mode(tmp_path: Path) -> None:
    policy = Policy.model_validate({"storage": {"state": "memory://", "state_mode": "owner"}})
    assert isinstance(await open_policy_state(policy, sole_process=True), MemoryStore)


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="state_mode"):
        Policy.model_validate({"storage": {"state_mode": "exclusive"}})
