"""Optional dependencies (pyproject's extras): a missing one names the command that
installs it, instead of Python's bare `No module named 'redis'`; and what every Redis
client tallygate opens is given."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tallygate.errors import ConfigError

# extra → the top-level modules it provides
EXTRA_MODULES = {
    "redis": frozenset({"redis", "hiredis"}),
    "postgres": frozenset({"psycopg", "psycopg_binary"}),
    "otel": frozenset({"opentelemetry"}),
}


class MissingExtra(ConfigError):
    """What the policy asks for needs an extra that is not installed."""

    code = "missing_extra"


def install_hint(extra: str) -> str:
    return f"pip install 'tallygate[{extra}]'"


@contextmanager
def needs(extra: str, what: str) -> Iterator[None]:
    """Turn an import of the extra's modules that fails into MissingExtra."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".", 1)[0] not in EXTRA_MODULES[extra]:
            raise
        raise MissingExtra(f"{what} needs the {extra} extra: {install_hint(extra)}") from None


@functools.cache
def redis_client_identity() -> dict[str, Any]:
    """What redis-py sends as CLIENT SETINFO, found once: left to itself it reads the
    installed package's metadata (a scan of sys.path) for every new connection, on the
    event loop."""
    try:
        from redis.driver_info import resolve_driver_info
    except ImportError:  # redis-py before 8
        from redis.utils import get_lib_version
        return {"lib_version": get_lib_version()}
    return {"driver_info": resolve_driver_info()}
