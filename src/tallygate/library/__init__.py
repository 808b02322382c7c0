"""The in-process front door: `Governor` and the governed openai / anthropic clients.

Loaded on first access (PEP 562): `tallygate.library.helpers` (count, trim, price)
does not pay for the runtime a Governor opens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tallygate.library.attribution import Attribution
    from tallygate.library.governor import Governor

__all__ = ["Attribution", "Governor"]

_LAZY = {"Attribution": "tallygate.library.attribution", "Governor": "tallygate.library.governor"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tallygate.library' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
