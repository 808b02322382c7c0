"""The three chunk invariants, property-tested, plus natural boundaries and big inputs."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tallygate.core.chunk import chunk
from tallygate.core.tokens import count_text
from tallygate.errors import InvalidRequest

ALPHABET = st.sampled_from(
    [*"abc XYZ.,!?\n\t", "東", "京", "😀", "👩‍👧", "é", "e\u0301", "ñ", "🇵🇹", "\u200d", "。"]
)
TEXTS = st.lists(ALPHABET, max_size=400).map("".join) | st.text(max_size=300)


def _check(text: str, pieces: list[str], max_tokens: int, model: str) -> None:
    assert "".join(pieces) == text  # lossless
    for piece in pieces:
        assert piece  # no empty pieces
        piece.encode("utf-8", "surrogatepass")  # a str slice: never inside a character
        assert count_text(piece, model).tokens <= max_tokens


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS, max_tokens=st.integers(min_value=4, max_value=40))
def test_invariants_o200k(text: str, max_tokens: int) -> None:
    _check(text, chunk(text, max_tokens, "gpt-4o"), max_tokens, "gpt-4o")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS, max_tokens=st.integers(min_value=6, max_value=40))
def test_invariants_cl100k_and_estimate(text: str, max_tokens: int) -> None:
    for model in ("gpt-4", "claude-sonnet-4-5"):
        _check(text, chunk(text, max_tokens, model), max_tokens, model)


def test_prefers_paragraphs_then_sentences() -> None:
    text = "First paragraph here.\n\nSecond paragraph, a bit longer than the first one.\n"
    assert chunk(text, 14, "gpt-4o") == [
        "First paragraph here.\n\n",
        "Second paragraph, a bit longer than the first one.\n",
    ]
    sentences = "One short sentence. Another short sentence. A third one here."
    pieces = chunk(sentences, 12, "gpt-4o")
    assert len(pieces) > 1 and "".join(pieces) == sentences
    assert all(p.endswith(". ") for p in pieces[:-1])  # cut at sentence ends, not mid-sentence


def test_big_and_hostile_inputs() -> None:
    text = ("Lorem ipsum dolor sit amet. " * 40 + "\n\n") * 500  # ~570 KB
    pieces = chunk(text, 1000, "gpt-4o")
    _check(text, pieces, 1000, "gpt-4o")
    one_word = "a" * 300_000
    _check(one_word, chunk(one_word, 100, "gpt-4o"), 100, "gpt-4o")


def test_bad_arguments() -> None:
    assert chunk("", 10) == []
    with pytest.raises(InvalidRequest):
        chunk("abc", 0)
    with pytest.raises(InvalidRequest, match="too small"):
        chunk("😀", 1, "gpt-4")
