"""From spec pieces to requests that fit: each piece split with `chunk` so that its whole
request (instructions, the piece, the JSON Schema) stays within the model's window less
the output room, and within the feature's `max_input`; each request counted the way the
engine counts it, and keyed for the artifact cache.

The cache key is the SHA-256 of the canonical request: the template version, protocol,
model, instructions, piece text, output cap, sampling parameters and schema, as sorted
JSON. Anything that changes the answer changes the key; nothing else does."""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from tallygate.ci.spec import Spec, SpecPiece
from tallygate.core.chunk import chunk
from tallygate.core.textcount import DEFAULT_MAX_CHARS
from tallygate.core.tokens import count_request, count_text
from tallygate.errors import InvalidRequest
from tallygate.providers.output_schema import apply_output_schema
from tallygate.types import ModelInfo

TEMPLATE_VERSION = 1  # bump when the framing of a request changes: every key changes
SCHEMA_NAME = "artifact"
_REFITS = 4
PARAMS = {
    "openai": ("temperature", "top_p", "seed", "stop", "frequency_penalty",
               "presence_penalty", "reasoning_effort", "verbosity"),
    "anthropic": ("temperature", "top_p", "top_k", "stop_sequences"),
}


@dataclass(frozen=True, slots=True)
class Chunk:
    name: str  # the step name and the artifact's file stem
    piece: str
    part: int
    parts: int
    body: dict[str, Any]  # the request, as the SDK's keyword arguments
    input_tokens: int
    key: str
    schema: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Plan:
    protocol: str  # "openai" | "anthropic"
    route: str
    model: ModelInfo
    max_output: int
    input_budget: int
    chunks: tuple[Chunk, ...]


def check_params(params: dict[str, Any], protocol: str, source: str) -> None:
    allowed = PARAMS[protocol]
    for name in params:
        if name not in allowed:
            hint = difflib.get_close_matches(name, allowed, n=1)
            guess = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise InvalidRequest(f"{source}: params.{name}: not a sampling parameter of the "
                                 f"{protocol} protocol{guess}; allowed: {', '.join(allowed)}")


def request_body(spec: Spec, protocol: str, model: ModelInfo, text: str,
                 schema: dict[str, Any] | None, max_output: int) -> dict[str, Any]:
    """One piece's request: instructions as the system prompt, the piece as the user
    turn, the schema as the protocol's structured-output parameter."""
    if protocol == "anthropic":
        body: dict[str, Any] = {"model": model.name, "system": spec.instructions,
                                "messages": [{"role": "user", "content": text}],
                                "max_tokens": max_output, **spec.params}
        route = "messages"
    else:
        body = {"model": model.name,
                "messages": [{"role": "system", "content": spec.instructions},
                             {"role": "user", "content": text}],
                "max_completion_tokens": max_output, **spec.params}
        route = "chat/completions"
    body, _ = apply_output_schema(protocol, route, SCHEMA_NAME, schema, body)
    return body


def cache_key(protocol: str, body: dict[str, Any]) -> str:
    canonical = orjson.dumps({"template": TEMPLATE_VERSION, "protocol": protocol,
                              "request": body}, option=orjson.OPT_SORT_KEYS)
    return "gen:" + hashlib.sha256(canonical).hexdigest()


def _input_tokens(protocol: str, body: dict[str, Any], model: ModelInfo,
                  schema: dict[str, Any] | None) -> int:
    """The request as the engine counts it; for Anthropic, whose count leaves out
    `output_config`, plus the schema's text (the provider reads it as input)."""
    route = "messages" if protocol == "anthropic" else "chat/completions"
    tokens = count_request(protocol, route, body, model, max_chars=DEFAULT_MAX_CHARS).tokens
    if protocol == "anthropic" and schema:
        tokens += count_text(orjson.dumps(schema).decode(), model).tokens
    return tokens


def build_plan(spec: Spec, protocol: str, model: ModelInfo, max_output: int,
               max_input: int | None) -> Plan:
    """Every piece split into requests that fit; InvalidRequest when even an empty piece
    cannot fit (instructions and schema alone too large)."""
    check_params(spec.params, protocol, spec.source)
    max_output = max(1, min(max_output, model.max_output_tokens or max_output))
    budget = model.context_window - max_output
    if max_input is not None:
        budget = min(budget, max_input)
    chunks: list[Chunk] = []
    for piece in spec.pieces:
        chunks += _piece_chunks(spec, piece, protocol, model, max_output, budget)
    route = "messages" if protocol == "anthropic" else "chat/completions"
    return Plan(protocol, route, model, max_output, budget, tuple(chunks))


def _piece_chunks(spec: Spec, piece: SpecPiece, protocol: str, model: ModelInfo,
                  max_output: int, budget: int) -> list[Chunk]:
    schema = piece.schema if piece.schema is not None else spec.schema
    empty = request_body(spec, protocol, model, "", schema, max_output)
    overhead = _input_tokens(protocol, empty, model, schema)
    room = budget - overhead
    if room < 1:
        raise InvalidRequest(
            f"piece {piece.name!r}: the instructions and schema alone are {overhead:,} tokens; "
            f"{model.name} leaves {budget:,} for the input with {max_output:,} for the output")
    parts = _fit(spec, piece.text, schema, protocol, model, max_output, budget, room)
    out = []
    for i, (text, tokens) in enumerate(parts, 1):
        body = request_body(spec, protocol, model, text, schema, max_output)
        name = piece.name if len(parts) == 1 else f"{piece.name}-part{i}"
        out.append(Chunk(name, piece.name, i, len(parts), body, tokens,
                         cache_key(protocol, body), schema))
    return out


def _fit(spec: Spec, text: str, schema: dict[str, Any] | None, protocol: str,
         model: ModelInfo, max_output: int, budget: int, room: int) -> list[tuple[str, int]]:
    """Pieces of `text` whose requests each count ≤ budget. Chat framing is not exactly
    additive, so a part that counts over is split again with the overshoot taken off."""
    pending = chunk(text, room, model, max_chars=DEFAULT_MAX_CHARS)
    out: list[tuple[str, int]] = []
    for part in pending:
        target, pieces = room, [part]
        for _ in range(_REFITS):
            counted = [(p, _input_tokens(protocol, request_body(
                spec, protocol, model, p, schema, max_output), model, schema)) for p in pieces]
            over = max(n for _, n in counted) - budget
            if over <= 0:
                out += counted
                break
            target = max(1, target - over)
            pieces = chunk(part, target, model, max_chars=DEFAULT_MAX_CHARS)
        else:
            raise InvalidRequest(f"a piece of {len(part):,} characters cannot be made to fit "
                                 f"{budget:,} input tokens")
    return out
