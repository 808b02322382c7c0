"""The state-store fixtures every conformance file shares: one parametrized factory
over memory, SQLite (shared and owner mode) and a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tallygate.state import StateStore, from_url
from tests.support.state import BACKENDS, StoreFactory


@pytest.fixture(params=BACKENDS)
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Opens stores that share one state (same file / same Redis namespace); options
    (`run_ttl` …) go to each store opened."""
    kind = request.param
    namespace = uuid.uuid4().hex[:12]
    opened: list[StateStore] = []
    shared_memory: list[StateStore] = []

    async def make(**opts: Any) -> StateStore:
        if kind == "memory":
            if not shared_memory:
                shared_memory.append(from_url("memory://", **opts))
            return shared_memory[0]
        if kind == "sqlite":
            store = from_url(f"sqlite:///{tmp_path / 'state.db'}", **opts)
        elif kind == "sqlite-owner":  # one process owns the file: one store object
            if opened:
                return opened[0]
            # Snapshots every 10 ms: they run between and during the operations.
            store = from_url(f"sqlite:///{tmp_path / 'state.db'}", owner=True,
                             flush_seconds=0.01, **opts)
        else:
            redis_url = request.getfixturevalue("redis_url")
            store = from_url(redis_url, namespace=namespace, **opts)
        opened.append(store)
        return store

    make.kind = kind  # type: ignore[attr-defined]
    yield make
    for store in opened + shared_memory:
        await store.close()


@pytest.fixture
async def store(store_factory: StoreFactory) -> StateStore:
    return await store_factory()
