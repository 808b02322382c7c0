"""Vendor the part of OpenAI's OpenAPI description the conformance tests validate against.

    python scripts/vendor_openapi.py PATH/TO/openapi.yaml

Reads the official description (github.com/openai/openai-openapi, `openapi.yaml`), keeps
the component schemas the tests name (ROOTS) and everything they reference, and writes
them, unchanged, to tests/data/openai-openapi.json. The `nullable: true` rewrite the
tests need is applied in code (tests/conformance/test_openapi.py), not here, so the file
stays a faithful subset of the source. Record the source commit in tests/data/README.md."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOTS = (
    "ChatCompletionStreamOptions",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateEmbeddingResponse",
    "ErrorResponse",
    "ListModelsResponse",
    "Response",
    "ResponseErrorEvent",
    "ResponseStreamEvent",
)
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "openai-openapi.json"
PREFIX = "#/components/schemas/"


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.startswith(PREFIX):
                found.add(ref[len(PREFIX):])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def closure(schemas: dict[str, Any]) -> dict[str, Any]:
    keep: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        todo.extend(refs(schemas[name]) - keep)
    return {name: schemas[name] for name in sorted(keep)}


def main(source: str) -> None:
    raw = Path(source).read_bytes()
    doc = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    kept = closure(doc["components"]["schemas"])
    out = {"openapi": doc["openapi"], "info": doc["info"], "components": {"schemas": kept}}
    OUT.write_bytes(orjson.dumps(out, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2,
                                 default=str) + b"\n")
    print(f"source sha256 {hashlib.sha256(raw).hexdigest()}; kept {len(kept)} of "
          f"{len(doc['components']['schemas'])} schemas -> {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
