"""State-store test helpers."""

from __future__ import annotations

from tallygate.state.sqlite_owner import OwnedSqliteStore


async def abandon(store: OwnedSqliteStore) -> None:
    """Leave an owner as a killed process would (OwnedSqliteStore.abandon)."""
    await store.abandon()
