"""Spec-driven output: a feature's `output_schema` (JSON Schema) sent as the protocol's
structured-output parameter when the client did not set one, so the model only fills
the declared slots (fewer output tokens; the ledger's per-feature output tokens show
the saving).

- OpenAI chat: `response_format: {"type": "json_schema", "json_schema": {"name",
  "schema", "strict": true}}`
- OpenAI Responses: `text.format: {"type": "json_schema", "name", "schema", "strict"}`
- Anthropic Messages: `output_config.format: {"type": "json_schema", "schema"}` (the GA
  structured-outputs parameter of anthropic SDK 2.x; the older beta `output_format` set
  by a client is respected as "client already chose")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_NAME = re.compile(r"[^a-zA-Z0-9_-]")


def schema_name(feature: str) -> str:
    """OpenAI wants ^[a-zA-Z0-9_-]{1,64}$."""
    return (_NAME.sub("_", feature) or "output")[:64]


def apply_output_schema(
    protocol: str, route: str, feature: str, schema: Mapping[str, Any] | None,
    body: dict[str, Any],
) -> tuple[dict[str, Any], bool]:
    """(body with the schema parameter added, whether it was added)."""
    if not schema or route == "embeddings":
        return body, False
    if protocol == "anthropic":
        out = _anthropic(body, dict(schema))
    elif route == "responses":
        out = _responses(body, feature, dict(schema))
    elif "response_format" in body:
        out = None
    else:
        out = {**body, "response_format": {"type": "json_schema", "json_schema": {
            "name": schema_name(feature), "schema": dict(schema), "strict": True}}}
    return (body, False) if out is None else (out, True)


def _anthropic(body: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any] | None:
    config = body.get("output_config")
    config = dict(config) if isinstance(config, Mapping) else {}
    if "format" in config or "output_format" in body:
        return None
    config["format"] = {"type": "json_schema", "schema": schema}
    return {**body, "output_config": config}


def _responses(body: dict[str, Any], feature: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    text = body.get("text")
    text = dict(text) if isinstance(text, Mapping) else {}
    if "format" in text:
        return None
    text["format"] = {"type": "json_schema", "name": schema_name(feature), "schema": schema,
                      "strict": True}
    return {**body, "text": text}
