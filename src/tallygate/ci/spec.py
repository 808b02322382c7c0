"""The spec `tallygate gen` generates from: YAML, JSON or Markdown.

YAML / JSON:

    instructions: Write the Python dataclass each piece describes.
    schema: {type: object, properties: {...}}      # JSON Schema of every answer (optional)
    model: gpt-4o-mini                               # optional: feature's model, --model
    feature: codegen                                 # optional: --feature, else `gen`
    max_output: 800                                  # optional: the feature's max_output
    params: {temperature: 0}                         # optional sampling parameters
    pieces:                                          # or `spec:` — one piece
      - {name: users, spec: "...", schema: {...}}    # spec: text, or any YAML value

Markdown: an optional YAML front matter (`---` … `---`) with the same keys but `pieces`
/ `spec`; the body is split at its top-level headings (the shallowest level used,
headings inside code fences ignored), each section one piece named after its heading.

A piece's text is canonical: text with `\\n` line ends and no surrounding blank space;
any other YAML value as sorted, indented JSON. It is what the model is sent and what the
cache key hashes, so reordering keys or re-saving with CRLF line ends keeps the cache."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tallygate.errors import InvalidRequest

MAX_SPEC_BYTES = 8 * 1024 * 1024
MAX_PIECES = 2_000
MAX_NODES = 200_000
NAME_CHARS = 64
DEFAULT_INSTRUCTIONS = (
    "You generate one part of a software project from its specification. The user "
    "message is one piece of the specification: produce exactly what it describes."
)
_CONFIG = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                     hide_input_in_errors=True)


class PieceDoc(BaseModel):
    model_config = _CONFIG

    name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    spec: Any
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")

    @field_validator("spec")
    @classmethod
    def _present(cls, value: Any) -> Any:
        if value is None or value == "":
            raise ValueError("a piece needs a non-empty spec")
        return value


class SpecDoc(BaseModel):
    """The keys of a YAML/JSON spec (and of a Markdown front matter)."""

    model_config = _CONFIG

    instructions: Annotated[str, Field(min_length=1)] | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    model: str | None = None
    feature: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    max_output: Annotated[int, Field(ge=1)] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    pieces: Annotated[list[PieceDoc], Field(max_length=MAX_PIECES)] | None = None
    spec: Any = None


@dataclass(frozen=True, slots=True)
class SpecPiece:
    name: str  # a file-name-safe slug, unique in the spec
    text: str
    schema: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Spec:
    source: str
    instructions: str
    schema: dict[str, Any] | None
    model: str | None
    feature: str | None
    max_output: int | None
    params: dict[str, Any] = field(default_factory=dict)
    pieces: tuple[SpecPiece, ...] = ()


# ---------------------------------------------------------------- loading


def load_spec(path: Path) -> Spec:
    """Read and validate a spec file; InvalidRequest (one line) for anything wrong."""
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise InvalidRequest(f"{path}: {size:,} bytes, over the {MAX_SPEC_BYTES:,}-byte "
                                 "cap of a spec")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InvalidRequest(f"{path}: no such spec file") from None
    except UnicodeDecodeError:
        raise InvalidRequest(f"{path}: a spec must be UTF-8 text") from None
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot read ({exc.strerror})") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    source = str(path)
    if path.suffix.lower() in (".md", ".markdown", ".txt"):
        return _markdown_spec(text, source)
    data = _parse(text, source, json_only=path.suffix.lower() == ".json")
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"{source}: expected a mapping with `pieces:` or `spec:`")
    doc = _validate(data, source)
    if doc.pieces is None and doc.spec is None:
        raise InvalidRequest(f"{source}: give `pieces:` (a list) or `spec:` (one piece)")
    if doc.pieces is not None and doc.spec is not None:
        raise InvalidRequest(f"{source}: give `pieces:` or `spec:`, not both")
    docs = doc.pieces if doc.pieces is not None else [PieceDoc(spec=doc.spec)]
    pieces = [(p.name or f"piece-{i}", canonical_text(p.spec), p.schema_)
              for i, p in enumerate(docs, 1)]
    return _spec(doc, source, pieces)


def _parse(text: str, source: str, *, json_only: bool) -> Any:
    try:
        data = json.loads(text) if json_only else yaml.safe_load(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"{source}: invalid JSON ({exc})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise InvalidRequest(f"{source}: invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{source}: invalid YAML ({type(exc).__name__})") from None
    _check_size(data, source)
    return data


def _check_size(data: Any, source: str) -> None:
    """Refuse documents that explode when walked (YAML aliases of aliases)."""
    stack, seen = [(data, 0)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES or depth > 64:
            raise InvalidRequest(f"{source}: the spec is too large or too deeply nested "
                                 f"(more than {MAX_NODES:,} values or 64 levels)")
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _validate(data: Mapping[str, Any], source: str, *, front_matter: bool = False) -> SpecDoc:
    try:
        doc = SpecDoc.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidRequest(_errors(exc, source)) from None
    if front_matter and (doc.pieces is not None or doc.spec is not None):
        raise InvalidRequest(f"{source}: the front matter of a Markdown spec takes no "
                             "`pieces`/`spec`: the body is the spec")
    return doc


def _errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"])
        loc = loc.replace(".[", "[")
        if err["type"] == "extra_forbidden":
            model = PieceDoc if "pieces" in err["loc"] else SpecDoc
            keys = [f.alias or n for n, f in model.model_fields.items()]
            hint = difflib.get_close_matches(str(err["loc"][-1]), keys, n=1)
            guess = f" (did you mean {hint[0]!r}?)" if hint else ""
            lines.append(f"{source}: {loc}: unknown key{guess}; expected one of: "
                         f"{', '.join(keys)}")
        else:
            lines.append(f"{source}: {loc or '(top level)'}: "
                         f"{str(err['msg']).removeprefix('Value error, ')}")
    return "\n".join(lines)


def canonical_text(value: Any) -> str:
    """A piece as sent and hashed (see the module docstring)."""
    if isinstance(value, str):
        return value.replace("\r\n", "\n").replace("\r", "\n").strip()
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, default=str)


# ---------------------------------------------------------------- Markdown

_FRONT = re.compile(r"\A---[ \t]*\n(.*?\n)?---[ \t]*(?:\n|\Z)", re.DOTALL)
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")


def _markdown_spec(text: str, source: str) -> Spec:
    doc = SpecDoc()
    front = _FRONT.match(text)
    if front:
        data = _parse(front.group(1) or "", source, json_only=False) or {}
        if not isinstance(data, Mapping):
            raise InvalidRequest(f"{source}: the front matter must be a YAML mapping")
        doc = _validate(data, source, front_matter=True)
        text = text[front.end():]
    return _spec(doc, source, markdown_sections(text))


def markdown_sections(text: str) -> list[tuple[str, str, None]]:
    """(name, section text, no schema) per top-level section; text before the first
    heading is the `intro` piece when it is not blank."""
    lines = text.split("\n")
    headings: list[tuple[int, int, str]] = []  # (line index, level, title)
    fence: str | None = None
    for i, line in enumerate(lines):
        opened = _FENCE.match(line)
        if opened:
            mark = opened.group(1)
            if fence is None:
                fence = mark[0] * 3
            elif mark.startswith(fence):
                fence = None
            continue
        found = _HEADING.match(line) if fence is None else None
        if found:
            headings.append((i, len(found.group(1)), found.group(2)))
    if not headings:
        return [("spec", text.strip(), None)] if text.strip() else []
    top = min(level for _, level, _ in headings)
    starts = [(i, title) for i, level, title in headings if level == top]
    out: list[tuple[str, str, None]] = []
    intro = "\n".join(lines[: starts[0][0]]).strip()
    if intro:
        out.append(("intro", intro, None))
    for n, (start, title) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        out.append((title, "\n".join(lines[start:end]).strip(), None))
    return out


# ---------------------------------------------------------------- pieces


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:NAME_CHARS].strip("-")


def _spec(doc: SpecDoc, source: str, pieces: list[tuple[str, str, Any]]) -> Spec:
    if not pieces:
        raise InvalidRequest(f"{source}: the spec has no pieces (it is empty)")
    if len(pieces) > MAX_PIECES:
        raise InvalidRequest(f"{source}: {len(pieces):,} pieces, over the cap of {MAX_PIECES:,}")
    seen: set[str] = set()
    out: list[SpecPiece] = []
    for i, (name, text, schema) in enumerate(pieces, 1):
        if not text:
            raise InvalidRequest(f"{source}: piece {name!r} is empty")
        base = slug(name) or f"piece-{i}"
        unique, n = base, 1
        while unique in seen:
            n += 1
            unique = f"{base}-{n}"
        seen.add(unique)
        out.append(SpecPiece(unique, text, schema))
    return Spec(source=source, instructions=doc.instructions or DEFAULT_INSTRUCTIONS,
                schema=doc.schema_, model=doc.model, feature=doc.feature,
                max_output=doc.max_output, params=dict(doc.params), pieces=tuple(out))
