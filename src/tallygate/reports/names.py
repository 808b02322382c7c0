"""Closest-name hints for names a caller typed (a report dimension, a window)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'feature'?)` for a near miss, else ''."""
    hint = difflib.get_close_matches(str(name)[:64], list(known), n=1, cutoff=0.6)
    return f" (did you mean {hint[0]!r}?)" if hint else ""
