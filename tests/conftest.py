from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import Server, postgres_server, redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, for the whole session."""
    with redis_server() as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (run as the `postgres` user) on a free loopback port."""
    with postgres_server() as server:
        yield server.url


__all__ = ["Server"]
