"""Virtual keys: stored as SHA-256 hashes, checked in constant time, cached for ≤ 1 s."""

from tallygate.keys.cache import CachedKeyStore
from tallygate.keys.model import VirtualKey, check_limits, parse_limit_items
from tallygate.keys.store import KeyStore, MemoryKeyStore, open_keystore

__all__ = [
    "CachedKeyStore",
    "KeyStore",
    "MemoryKeyStore",
    "VirtualKey",
    "check_limits",
    "open_keystore",
    "parse_limit_items",
]
