"""The cache key: SHA-256 of the canonical request.

Canonical = the fields that decide the answer (model, messages/input/system, tools,
tool_choice, response_format, sampling parameters, output cap …) serialised as JSON
with sorted keys and no whitespace, plus the protocol, route and feature (a feature may
change the model, the output cap or the output schema). Left out because they do not
change the answer: `user`, `stream`, `stream_options`, `metadata`, `store`,
`service_tier`, `prompt_cache_key`, `safety_identifier`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

# Fields that never change what the model answers.
IGNORED_FIELDS = frozenset(
    {"user", "stream", "stream_options", "metadata", "store", "service_tier",
     "prompt_cache_key", "safety_identifier"}
)


def canonical_request(
    protocol: str, route: str, model: str, body: Mapping[str, Any], feature: str
) -> bytes:
    """The bytes hashed for the key (stable across key order and whitespace)."""
    kept = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    kept["model"] = model
    envelope = {"protocol": protocol, "route": route, "feature": feature, "request": kept}
    return orjson.dumps(envelope, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def request_key(
    protocol: str, route: str, model: str, body: Mapping[str, Any], feature: str
) -> str:
    """Hex SHA-256 of the canonical request."""
    return hashlib.sha256(canonical_request(protocol, route, model, body, feature)).hexdigest()


def turns_key(model: str, turns: Any) -> str:
    """Hex SHA-256 of conversation turns (the summary cache), with the summarising model."""
    data = orjson.dumps({"model": model, "turns": turns},
                        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return "summary:" + hashlib.sha256(data).hexdigest()
