"""Offline, hash-verified encodings equal tiktoken's and an independent tokenizer's counts."""

from __future__ import annotations

import hashlib

import bpe_openai
import pytest

from tallygate.core import bpe
from tallygate.errors import ConfigError
from tests.support.corpus import CORPUS


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_counts_equal_independent_tokenizer(name: str) -> None:
    ours = bpe.get_encoding(name)
    reference = bpe_openai.get_encoding(name)  # Rust implementation, its own data path
    for text in CORPUS:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text), text


def test_expected_hashes_come_from_tiktoken() -> None:
    assert bpe.expected_hash("o200k_base") == (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
    )
    assert bpe.expected_hash("cl100k_base").startswith("223921b7")


def test_tampered_file_is_refused() -> None:
    with pytest.raises(bpe.BpeIntegrityError, match="failed verification"):
        bpe.parse_verified(b"IQ== 0\n", bpe.expected_hash("o200k_base"), "x")


def test_ranks_parse_as_tiktoken_parses_them() -> None:
    raw = b"IQ== 0\nIg== 1\n\nIw== 2\n"
    expected = load_tiktoken_bpe_bytes(raw)
    assert bpe.parse_verified(raw, sha256(raw), "x") == expected == {b"!": 0, b'"': 1, b"#": 2}
    odd = b"IQ== 0\nIg==\n"
    with pytest.raises(bpe.BpeIntegrityError, match="not `<token> <rank>` lines"):
        bpe.parse_verified(odd, sha256(odd), "x")


def test_a_missing_rank_file_is_an_integrity_error() -> None:
    with pytest.raises(bpe.BpeIntegrityError, match="no local BPE file 'p50k_base"):
        bpe.load_verified_ranks("p50k_base.tiktoken.gz", "0" * 64)


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def load_tiktoken_bpe_bytes(raw: bytes) -> dict[bytes, int]:
    """tiktoken's own parse (`tiktoken.load.load_tiktoken_bpe`), on bytes."""
    import base64
    return {base64.b64decode(token): int(rank)
            for token, rank in (line.split() for line in raw.splitlines() if line)}


def test_special_tokens_match_tiktoken_constructor() -> None:
    enc = bpe.get_encoding("o200k_base")
    assert enc.encode("<|endoftext|>", allowed_special="all") == [199999]
    assert bpe.get_encoding("cl100k_base").n_vocab == 100277
    assert bpe.get_encoding("o200k_harmony").encode("<|start|>", allowed_special="all") == [200006]


def test_cached_per_process() -> None:
    assert bpe.get_encoding("o200k_base") is bpe.get_encoding("o200k_base")


def test_unknown_encoding_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not available offline"):
        bpe.get_encoding("p50k_base")
