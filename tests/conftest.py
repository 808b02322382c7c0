"""Test layers (docs/architecture.md, Tests): unit/ pure, engine/ in process, conformance/
every backend on real servers, gateway/ the HTTP front door, library/, cli/, dashboard/
(the browser), support/ the shared parts.

Markers say what a test needs and are applied here from the fixtures it uses — directly,
or as a backend parameter — so `-m "not redis"` deselects everything that needs Redis."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.support")
pytest_plugins = ["tests.support.fixtures"]

# Fixture (or backend parameter) → the marker of what it needs.
_NEEDS = {"redis_url": "redis", "postgres_url": "postgres", "redis": "redis",
          "postgres": "postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        needs = {_NEEDS[name] for name in getattr(item, "fixturenames", ()) if name in _NEEDS}
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            needs |= {_NEEDS[v] for v in callspec.params.values()
                      if isinstance(v, str) and v in _NEEDS}
        for marker in sorted(needs):
            item.add_marker(getattr(pytest.mark, marker))
