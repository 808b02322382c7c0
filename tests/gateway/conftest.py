"""Gateway tests: the fixtures are shared (tests/support/fixtures.py)."""

import pytest


@pytest.fixture(autouse=True)
def _no_blocking(no_blocking: object) -> None:
    """Every gateway test: tallygate's code never blocks the event loop unexpectedly."""
