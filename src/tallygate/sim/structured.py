"""Structured output in the simulated provider. A request that asks for a JSON Schema
(OpenAI chat `response_format`, Responses `text.format`, Anthropic
`output_config.format`) is answered with a deterministic JSON instance of it, as strict
structured outputs are: every property present, the first `enum`/`anyOf` choice, one array
item (or `minItems`), a few words for a string. The reply's token count is the real count
of that JSON; a `max_tokens` smaller than it cuts the text (finish `length`), as a real
model's reply is cut mid-object."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tallygate.sim.common import reply_text

_MAX_DEPTH = 12
_MAX_ITEMS = 3


def requested_schema(protocol: str, route: str, body: Mapping[str, Any]) -> Any:
    """The JSON Schema the request asks the reply to follow, or None."""
    if protocol == "anthropic":
        config = body.get("output_config")
        fmt = config.get("format") if isinstance(config, Mapping) else None
        if not isinstance(fmt, Mapping):
            fmt = body.get("output_format")  # the older beta parameter
        return fmt.get("schema") if isinstance(fmt, Mapping) and fmt.get(
            "type") == "json_schema" else None
    if route == "responses":
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, Mapping) else None
        return fmt.get("schema") if isinstance(fmt, Mapping) and fmt.get(
            "type") == "json_schema" else None
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        return spec.get("schema") if isinstance(spec, Mapping) else None
    return None


def _resolve(schema: Any, root: Any) -> Any:
    ref = schema.get("$ref") if isinstance(schema, Mapping) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def instance(schema: Any, seed: int, root: Any = None, depth: int = 0) -> Any:
    """A value that satisfies `schema` (the subset strict structured outputs allow)."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return instance(schema[key][0], seed, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    return _typed(kind, schema, seed, root, depth)


def _typed(kind: Any, schema: Mapping[str, Any], seed: int, root: Any, depth: int) -> Any:
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        return {str(name): instance(sub, seed ^ zlib.crc32(str(name).encode()), root,
                                    depth + 1)
                for name, sub in props.items()}
    if kind == "array":
        low = schema.get("minItems")
        count = min(_MAX_ITEMS, low) if isinstance(low, int) and low > 0 else 1
        return [instance(schema.get("items", {}), seed + i, root, depth + 1)
                for i in range(count)]
    return _scalar(kind, schema, seed)


def _scalar(kind: Any, schema: Mapping[str, Any], seed: int) -> Any:
    scalars = {
        "integer": lambda: _bounded(seed % 100, schema),
        "number": lambda: float(_bounded(seed % 100, schema)),
        "boolean": lambda: seed % 2 == 0,
        "null": lambda: None,
    }
    make = scalars.get(kind)
    return make() if make is not None else reply_text(seed, 3)


def _bounded(value: int, schema: Mapping[str, Any]) -> int:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(low, int | float) and value < low:
        value = int(-(-low // 1))
    if isinstance(high, int | float) and value > high:
        value = int(high // 1)
    return value


@dataclass(frozen=True, slots=True)
class StructuredReply:
    """The whole JSON answer and its tokens; `cut` gives what a smaller cap lets out."""

    text: str
    tokens: int

    def cut(self, tokens: int) -> str:
        if tokens >= self.tokens:
            return self.text
        return self.text[: max(1, len(self.text) * tokens // self.tokens)]


def structured_reply(protocol: str, route: str, body: Mapping[str, Any], seed: int,
                     model: str) -> StructuredReply | None:
    """The schema-shaped answer a request asks for, or None (a plain-text request)."""
    schema = requested_schema(protocol, route, body)
    if schema is None:
        return None
    import orjson

    text = orjson.dumps(instance(schema, seed)).decode()
    return StructuredReply(text, _count(text, model))


def _count(text: str, model: str) -> int:
    from tallygate.core.tokens import count_text
    from tallygate.errors import TallygateError

    try:
        return max(1, count_text(text, model).tokens)
    except TallygateError:  # a model the catalog does not know: about 4 characters a token
        return max(1, len(text) // 4)
