"""Which feature flags are on, and where each value comes from: the read model behind
`GET /admin/flags`, `tallygate flags list` and the dashboard's flags page."""

from __future__ import annotations

from collections.abc import Mapping

from tallygate.errors import InvalidRequest
from tallygate.state.base import StateStore

RESERVED = "tallygate:"  # tallygate's own entries among the flags (gateway/reload.py)
MAX_NAME = 128


def check_feature_name(name: str) -> str:
    """A flag's name as an operator typed it: 1-128 printable characters."""
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidRequest("A feature name is 1-128 printable characters.", param="feature")
    return name


async def flag_list(store: StateStore, static: Mapping[str, bool]) -> list[dict[str, object]]:
    """Every known flag: the policy's (features and `flags:`) overridden by run-time ones."""
    runtime = {k: v for k, v in (await store.flags()).items() if not k.startswith(RESERVED)}
    names = sorted({*static, *runtime})
    return [
        {"feature": name, "on": runtime.get(name, static.get(name, True)),
         "source": "runtime" if name in runtime else "policy"}
        for name in names
    ]
