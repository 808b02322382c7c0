"""Splitting text into pieces of at most `max_tokens` tokens.

Invariants (property-tested): every piece counts ≤ max_tokens with the model's counter; the
pieces join back to the input exactly; pieces are `str` slices, so no UTF-8 character is ever
cut. Boundaries are tried from the most natural down: blank line, line, sentence, word, and
only then an arbitrary character position (the "token" level).

Cost stays linear: each level counts a span once and hands only the spans that are still too
big to the next level (≤ 5 counts per character); pieces are then packed greedily by the sum
of their counts and each packed piece is verified once (BPE counts are not exactly additive,
so an over-full pack drops its last unit and is re-verified — rare). The character level
guesses each piece's length from the span's chars-per-token ratio and shrinks on overshoot.
"""

from __future__ import annotations

from collections.abc import Callable

import regex

from tallygate.core.catalog import resolve_model
from tallygate.core.textcount import check_size, counter_for
from tallygate.errors import InvalidRequest
from tallygate.types import ModelInfo

# Each pattern marks the end of a boundary: a span is cut right after each match.
_LEVELS = (
    regex.compile(r"\n[^\S\n]*\n\s*"),  # blank line(s)
    regex.compile(r"\n"),  # line
    regex.compile(r"[.!?…]+[\"')\]»”’]*\s+|[。！？]+"),  # sentence
    regex.compile(r"\s+"),  # word
)
_FILL = 0.97  # aim a little under the budget so the first guess usually fits

Counter = Callable[[str], int]


def _cut(text: str, pattern: regex.Pattern[str]) -> list[str]:
    parts: list[str] = []
    start = 0
    for match in pattern.finditer(text):
        end = match.end()
        if start < end < len(text):
            parts.append(text[start:end])
            start = end
    parts.append(text[start:])
    return parts


def _split_chars(text: str, tokens: int, count: Counter, max_tokens: int) -> list[tuple[str, int]]:
    """Character-level pieces: length guessed from the chars/token ratio, shrunk on overshoot."""
    out: list[tuple[str, int]] = []
    ratio = len(text) / max(tokens, 1)
    start = 0
    while start < len(text):
        size = max(1, int(max_tokens * ratio * _FILL))
        while True:
            piece = text[start : start + size]
            n = count(piece)
            if n <= max_tokens:
                break
            if size == 1:
                raise InvalidRequest(
                    f"max_tokens={max_tokens} is too small: the character {piece!r} "
                    f"alone is {n} tokens"
                )
            size = max(1, min(size - 1, int(size * max_tokens / n * _FILL)))
        out.append((piece, n))
        start += len(piece)
        if n:
            ratio = len(piece) / n
    return out


def _units(
    text: str, tokens: int, level: int, count: Counter, max_tokens: int
) -> list[tuple[str, int]]:
    """Spans of `text` (which counts `tokens`), each ≤ max_tokens, in order."""
    if tokens <= max_tokens:
        return [(text, tokens)]
    for depth in range(level, len(_LEVELS)):
        parts = _cut(text, _LEVELS[depth])
        if len(parts) > 1:
            out: list[tuple[str, int]] = []
            for part in parts:
                out.extend(_units(part, count(part), depth + 1, count, max_tokens))
            return out
    return _split_chars(text, tokens, count, max_tokens)


def _pack(units: list[tuple[str, int]], count: Counter, max_tokens: int) -> list[str]:
    """Greedy packing by summed counts, each packed piece verified once."""
    out: list[str] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and total + units[j][1] <= max_tokens:
            total += units[j][1]
            j += 1
        j = max(j, i + 1)
        while True:
            piece = "".join(u[0] for u in units[i:j])
            if j - i == 1 or count(piece) <= max_tokens:
                break
            j -= 1
        out.append(piece)
        i = j
    return out


def chunk(
    text: str,
    max_tokens: int,
    model: ModelInfo | str | None = None,
    *,
    max_chars: int | None = None,
) -> list[str]:
    """Pieces of `text`, each ≤ max_tokens tokens, joined back they give `text` exactly."""
    if not isinstance(text, str):
        raise InvalidRequest("text must be a string")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    check_size(len(text), max_chars)
    if not text:
        return []
    counter = counter_for(resolve_model(model).encoding)
    count = counter.tokens
    units = _units(text, count(text), 0, count, max_tokens)
    return _pack(units, count, max_tokens)
