"""gen's spec loading and planning: pieces from YAML/Markdown, canonical text, requests
that fit the window and the feature's max_input, and cache keys that change exactly when
the answer could."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from tallygate.ci.plan import build_plan, cache_key
from tallygate.ci.spec import Spec, load_spec, markdown_sections
from tallygate.core.catalog import resolve_model
from tallygate.core.tokens import count_request
from tallygate.errors import InvalidRequest
from tallygate.sim.structured import instance, requested_schema

MINI = resolve_model("gpt-4o-mini")


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_bytes(text.encode())
    return path


def test_markdown_splits_at_top_level_headings_outside_fences() -> None:
    text = ("Intro words.\n\n## Users\nA user.\n### Fields\nid, name\n"
            "```md\n## not a heading\n```\n## Orders\nAn order.\n## Users\nAgain.\n")
    sections = markdown_sections(text)
    assert [name for name, _, _ in sections] == ["intro", "Users", "Orders", "Users"]
    assert sections[1][1] == "## Users\nA user.\n### Fields\nid, name\n```md\n## not a heading\n```"
    spec_text = "".join(s[1] for s in sections)
    assert "## not a heading" in spec_text


def test_markdown_front_matter_and_unique_names(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, "s.md", "---\nmodel: gpt-4o\nmax_output: 50\n---\n"
                            "# A b!\none\n# A b?\ntwo\n"))
    assert spec.model == "gpt-4o" and spec.max_output == 50
    assert [p.name for p in spec.pieces] == ["a-b", "a-b-2"]
    with pytest.raises(InvalidRequest, match="front matter of a Markdown spec takes no"):
        load_spec(_write(tmp_path, "t.md", "---\npieces: []\n---\n# x\n"))


def test_structured_pieces_are_canonical_json(tmp_path: Path) -> None:
    a = load_spec(_write(tmp_path, "a.yaml", "pieces:\n  - {name: u, spec: {b: 1, a: [x, y]}}\n"))
    b = load_spec(_write(tmp_path, "b.json", json.dumps({"pieces": [
        {"name": "u", "spec": {"a": ["x", "y"], "b": 1}}]})))
    assert a.pieces[0].text == b.pieces[0].text == json.dumps(
        {"a": ["x", "y"], "b": 1}, indent=2, sort_keys=True)


def _keys(spec: Spec) -> list[str]:
    return [c.key for c in build_plan(spec, "openai", MINI, 100, None).chunks]


def test_cache_keys_change_exactly_when_the_answer_could(tmp_path: Path) -> None:
    base = load_spec(_write(tmp_path, "s.md", "# One\nfirst\n# Two\nsecond\n"))
    crlf = load_spec(_write(tmp_path, "c.md", "# One\r\nfirst\r\n\r\n# Two\r\nsecond  \r\n"))
    keys = _keys(base)
    assert keys == _keys(crlf)  # line ends and trailing blanks do not matter
    edited = load_spec(_write(tmp_path, "e.md", "# One\nfirst\n# Two\nsecond, edited\n"))
    assert _keys(edited)[0] == keys[0] and _keys(edited)[1] != keys[1]
    changes = [
        dataclasses.replace(base, instructions="Other instructions."),
        dataclasses.replace(base, schema={"type": "object", "properties": {}}),
        dataclasses.replace(base, params={"temperature": 0}),
    ]
    for spec in changes:
        assert set(_keys(spec)).isdisjoint(keys)
    assert set(c.key for c in build_plan(base, "openai", MINI, 101, None).chunks).isdisjoint(keys)
    assert set(c.key for c in build_plan(base, "openai", resolve_model("gpt-4o"), 100,
                                         None).chunks).isdisjoint(keys)
    body = build_plan(base, "openai", MINI, 100, None).chunks[0].body
    assert cache_key("openai", dict(reversed(body.items()))) == keys[0]  # order-free


def test_a_large_piece_is_split_so_every_request_fits(tmp_path: Path) -> None:
    text = "\n\n".join(f"Section {i}. " + "The gateway settles usage exactly. " * 30
                       for i in range(20))
    spec = load_spec(_write(tmp_path, "big.yaml", json.dumps({
        "instructions": "Summarise.", "spec": text,
        "schema": {"type": "object", "properties": {"s": {"type": "string"}}}})))
    plan = build_plan(spec, "openai", MINI, 200, max_input=1000)
    assert plan.input_budget == 1000 and len(plan.chunks) > 3
    assert [c.name for c in plan.chunks][:2] == ["piece-1-part1", "piece-1-part2"]
    for c in plan.chunks:
        counted = count_request("openai", "chat/completions", c.body, MINI).tokens
        assert counted == c.input_tokens <= 1000
        assert c.body["response_format"]["type"] == "json_schema"
    joined = "".join(c.body["messages"][1]["content"] for c in plan.chunks)
    assert joined == text.strip()
    with pytest.raises(InvalidRequest, match="instructions and schema alone"):
        build_plan(dataclasses.replace(spec, instructions="long " * 400), "openai", MINI,
                   200, max_input=300)


def test_anthropic_requests_count_the_schema_too(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"a_long_property_name": {"type": "string"}}}
    spec = load_spec(_write(tmp_path, "s.yaml", json.dumps({"spec": "hi", "schema": schema})))
    claude = resolve_model("claude-haiku-4-5")
    chunk = build_plan(spec, "anthropic", claude, 100, None).chunks[0]
    plain = count_request("anthropic", "messages", chunk.body, claude).tokens
    assert chunk.input_tokens > plain
    assert chunk.body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert chunk.body["system"] == spec.instructions and chunk.body["max_tokens"] == 100


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 500},
                                      "tags": {"type": "array", "items": {"type": "string"},
                                               "minItems": 2},
                                      "kind": {"anyOf": [{"type": "null"}, {"type": "number"}]},
                                      "ok": {"type": "boolean"}},
     "required": ["n", "tags", "kind", "ok"], "additionalProperties": False},
    {"$defs": {"item": {"type": "object", "properties": {"id": {"const": 7}},
                        "required": ["id"]}},
     "type": "object",
     "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}}},
     "required": ["items"]},
])
def test_the_simulator_answers_schemas_with_valid_instances(schema: dict) -> None:
    for seed in (0, 1, 12345):
        jsonschema.validate(instance(schema, seed), schema)
    body = {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    assert requested_schema("openai", "chat/completions", body) == schema
    assert requested_schema("anthropic", "messages",
                            {"output_config": {"format": {"type": "json_schema",
                                                          "schema": schema}}}) == schema
    assert requested_schema("openai", "responses", {"text": {"format": {"type": "text"}}}) is None
