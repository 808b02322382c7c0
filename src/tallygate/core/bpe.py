"""Offline, hash-verified tiktoken encodings.

tiktoken downloads its BPE rank files on first use; tallygate never does. The rank files of
cl100k_base and o200k_base ship gzipped inside the `bpe-openai` wheel
(`bpe_openai/data/<name>.tiktoken.gz`). We decompress them, check the bytes against the
sha256 that tiktoken's own constructors carry (`tiktoken_ext/openai_public.py`, read at run
time, not copied here), and build a `tiktoken.Encoding` with the exact pat_str and special
tokens of tiktoken's constructor. The constructor is re-run with a private copy of its module
globals in which `load_tiktoken_bpe` is our verifying local loader, so nothing global is
patched and no network call can happen.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import importlib.util
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tiktoken
from tiktoken_ext import openai_public

from tallygate.errors import ConfigError

# Encodings whose rank file a local package ships; o200k_harmony reuses o200k_base's ranks.
SUPPORTED_ENCODINGS: tuple[str, ...] = ("cl100k_base", "o200k_base", "o200k_harmony")

_DATA_PACKAGE = "bpe_openai"  # its `data/` folder; the package itself is never imported
_lock = threading.Lock()
_cache: dict[str, tiktoken.Encoding] = {}


class BpeIntegrityError(ConfigError):
    """A local rank file is missing or does not match tiktoken's official hash."""


def _rank_file_name(url: str) -> str:
    """`https://…/encodings/o200k_base.tiktoken` → `o200k_base.tiktoken.gz`."""
    return url.rsplit("/", 1)[-1] + ".gz"


def _data_file(file_name: str) -> Path:
    """Where bpe-openai keeps `file_name`, found without importing the package: importing
    it builds its own copy of every encoding (a third of a second and tens of MB)."""
    spec = importlib.util.find_spec(_DATA_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / file_name
        if path.is_file():
            return path
    raise BpeIntegrityError(f"no local BPE file {file_name!r} in {_DATA_PACKAGE}/data")


def load_verified_ranks(file_name: str, expected_hash: str) -> dict[bytes, int]:
    """Read a gzipped rank file from bpe-openai's data, verify its sha256, parse it."""
    packed = _data_file(file_name).read_bytes()
    raw = gzip.decompress(packed)
    return parse_verified(raw, expected_hash, file_name)


def parse_verified(raw: bytes, expected_hash: str, label: str) -> dict[bytes, int]:
    """Parse tiktoken's `<base64 token> <rank>` lines once the bytes match the hash."""
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected_hash:
        raise BpeIntegrityError(
            f"BPE file {label!r} failed verification: sha256 {actual} != expected {expected_hash}"
        )
    return _parse(raw, label)


def _parse(raw: bytes, label: str) -> dict[bytes, int]:
    fields = raw.split()  # a token and its rank on every line (blank lines ignored)
    if len(fields) % 2:
        raise BpeIntegrityError(f"BPE file {label!r} is not `<token> <rank>` lines")
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]),
                    strict=True))


def _offline_loader(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    if not expected_hash:
        raise BpeIntegrityError(f"tiktoken gives no hash for {url}; refusing to load it")
    return load_verified_ranks(_rank_file_name(url), expected_hash)


def _rebind(loader: Callable[..., dict[bytes, int]]) -> dict[str, Callable[[], dict[str, Any]]]:
    """tiktoken's constructors, rebound to private globals where `load_tiktoken_bpe` is
    `loader` (the module itself is never patched)."""
    scope = dict(vars(openai_public))
    scope["load_tiktoken_bpe"] = loader
    rebound: dict[str, Callable[[], dict[str, Any]]] = {}
    for name, fn in openai_public.ENCODING_CONSTRUCTORS.items():
        clone = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
        scope[fn.__name__] = clone  # o200k_harmony calls o200k_base() through globals
        rebound[name] = clone
    return rebound


class _Found(Exception):
    def __init__(self, hash_: str) -> None:
        super().__init__(hash_)
        self.hash = hash_


def expected_hash(name: str) -> str:
    """The sha256 tiktoken's constructor for `name` expects (read from tiktoken itself)."""

    def spy(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        raise _Found(expected_hash or "")

    try:
        _rebind(spy)[name]()
    except _Found as found:
        return found.hash
    raise BpeIntegrityError(f"tiktoken's constructor for {name!r} loads no rank file")


def get_encoding(name: str) -> tiktoken.Encoding:
    """A verified tiktoken Encoding, built once per process (thread-safe)."""
    enc = _cache.get(name)
    if enc is not None:
        return enc
    if name not in SUPPORTED_ENCODINGS:
        raise ConfigError(
            f"encoding {name!r} is not available offline; "
            f"use one of {', '.join(SUPPORTED_ENCODINGS)}"
        )
    with _lock:
        enc = _cache.get(name)
        if enc is None:
            params = _rebind(_offline_loader)[name]()
            enc = tiktoken.Encoding(**params)
            _cache[name] = enc
    return enc


def warm() -> None:
    """Build every offline encoding now (about 0.6 s of reading and parsing), so that no
    request on an event loop pays for it: servers call it in a thread as they start."""
    for name in SUPPORTED_ENCODINGS:
        get_encoding(name)
