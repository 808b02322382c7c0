"""Conformance: the simulated provider's bodies and stream chunks, and the OpenAI error
bodies the adapters produce, validate against the official OpenAI OpenAPI description
(the subset vendored in tests/data/openai-openapi.json, see tests/data/README.md), with
`nullable: true` rewritten to accept null: the document is OpenAPI 3.1 but still uses the
3.0 keyword, which a JSON Schema 2020-12 validator ignores."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tallygate import errors
from tallygate.providers import openai as oai
from tallygate.providers.common import parse_event
from tallygate.sim import SimConfig, create_sim_app

SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "openai-openapi.json"
BASE = "urn:openai-openapi"
MSGS = [{"role": "user", "content": "Tell me about token budgets."}]


def allow_null(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 `nullable: true` as JSON Schema 2020-12 (anyOf with null)."""
    if isinstance(node, list):
        return [allow_null(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: allow_null(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def spec() -> dict[str, Any]:
    """Parsed and rewritten once per session."""
    return allow_null(orjson.loads(SPEC_PATH.read_bytes()))


@cache
def validator(schema_name: str) -> Draft202012Validator:
    doc = spec()
    assert schema_name in doc["components"]["schemas"], schema_name
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry = Registry().with_resource(BASE, resource)
    return Draft202012Validator(
        {"$ref": f"{BASE}#/components/schemas/{schema_name}"}, registry=registry
    )


def check(schema_name: str, instance: Any) -> None:
    problems = sorted(validator(schema_name).iter_errors(instance), key=lambda e: e.path)
    assert not problems, f"{schema_name}: " + "; ".join(
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in problems[:5]
    )


@cache
def stream_event_schemas() -> dict[str, str]:
    """Responses stream event type → its schema name (from ResponseStreamEvent)."""
    schemas = spec()["components"]["schemas"]
    out = {}
    for option in schemas["ResponseStreamEvent"]["anyOf"]:
        name = option["$ref"].rsplit("/", 1)[-1]
        kind = schemas[name].get("properties", {}).get("type", {})
        for value in kind.get("enum", []):
            out[value] = name
    return out


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = create_sim_app(SimConfig(reply_tokens=12, stream_chunk_tokens=2))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def post(client: TestClient, path: str, body: dict, **headers: str) -> tuple[int, bytes]:
    resp = await client.post(path, data=orjson.dumps(body), headers=headers)
    return resp.status, await resp.read()


def sse_data(raw: bytes) -> list[tuple[str | None, str]]:
    events = [parse_event(part + b"\n\n") for part in raw.split(b"\n\n") if part.strip()]
    return [(e.event, e.data) for e in events if e.data is not None]


# --------------------------------------------------------------------------- tests


def test_nullable_rewrite_is_needed_and_applied() -> None:
    chunk_schema = spec()["components"]["schemas"]["ChatCompletionStreamOptions"]
    assert "nullable" not in orjson.dumps(chunk_schema).decode()


@pytest.mark.parametrize("extra", [{}, {"n": 2, "max_tokens": 5}, {"max_completion_tokens": 3}])
async def test_chat_completion_body(client: TestClient, extra: dict) -> None:
    status, raw = await post(client, "/v1/chat/completions",
                             {"model": "gpt-4o-mini", "messages": MSGS, **extra})
    assert status == 200
    check("CreateChatCompletionResponse", orjson.loads(raw))


@pytest.mark.parametrize("include_usage", [True, False])
async def test_chat_stream_chunks(client: TestClient, include_usage: bool) -> None:
    body = {"model": "gpt-4o-mini", "messages": MSGS, "stream": True, "n": 2}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    status, raw = await post(client, "/v1/chat/completions", body)
    assert status == 200
    events = sse_data(raw)
    assert events[-1] == (None, "[DONE]")
    chunks = [orjson.loads(data) for _, data in events[:-1]]
    for chunk in chunks:
        check("CreateChatCompletionStreamResponse", chunk)
    assert (chunks[-1]["choices"] == []) is include_usage


@pytest.mark.parametrize("extra", [{}, {"max_output_tokens": 16, "instructions": "Be brief."}])
async def test_responses_body(client: TestClient, extra: dict) -> None:
    status, raw = await post(client, "/v1/responses",
                             {"model": "gpt-4o-mini", "input": "Hello", **extra})
    assert status == 200
    check("Response", orjson.loads(raw))


async def test_responses_stream_events(client: TestClient) -> None:
    status, raw = await post(client, "/v1/responses",
                             {"model": "gpt-4o-mini", "input": "Hi", "stream": True,
                              "max_output_tokens": 16})
    assert status == 200
    names = stream_event_schemas()
    events = sse_data(raw)
    assert events
    for name, data in events:
        obj = orjson.loads(data)
        assert name == obj["type"]
        check(names[obj["type"]], obj)
        check("ResponseStreamEvent", obj)


EXEC = {"type": "custom", "name": "exec", "description": "Run a command.",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}
READ = {"type": "function", "name": "read_file", "description": "Read a file.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                       "required": ["path"]}}
TOOLS_ITEM = {"type": "additional_tools", "role": "developer",
              "tools": [{"type": "namespace", "name": "functions", "description": "Tools.",
                         "tools": [EXEC, READ]}]}


def _agent_input(marker: str) -> list[dict]:
    return [TOOLS_ITEM, {"type": "message", "role": "user",
                         "content": [{"type": "input_text", "text": f"Go. {marker}"}]}]


AGENT_CASES = {
    "custom_tool_call": {"input": _agent_input("[sim-tool: exec ls -la]")},
    "function_call": {"input": _agent_input('[sim-tool: read_file {"path": "a.md"}]')},
    "text": {"input": _agent_input("")},
    "forced": {"input": "Hi", "tools": [READ], "tool_choice": "required"},
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", sorted(AGENT_CASES))
async def test_responses_reasoning_and_tool_calls(client: TestClient, case: str,
                                                  stream: bool) -> None:
    """What Codex gets: a reasoning item (encrypted content when asked), then a
    custom_tool_call, a function_call or a message; reasoning tokens in the usage."""
    body = {"model": "gpt-5-mini", "stream": stream, "store": False,
            "reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"],
            **AGENT_CASES[case]}
    status, raw = await post(client, "/v1/responses", body)
    assert status == 200
    if stream:
        names = stream_event_schemas()
        events = [orjson.loads(data) for _, data in sse_data(raw)]
        for obj in events:
            check(names[obj["type"]], obj)
            check("ResponseStreamEvent", obj)
        final = events[-1]["response"]
    else:
        final = orjson.loads(raw)
    check("Response", final)
    kinds = [item["type"] for item in final["output"]]
    wanted = {"custom_tool_call": "custom_tool_call", "function_call": "function_call",
              "forced": "function_call", "text": "message"}[case]
    assert kinds == ["reasoning", wanted]
    assert final["output"][0]["encrypted_content"]
    usage = final["usage"]
    assert 0 < usage["output_tokens_details"]["reasoning_tokens"] < usage["output_tokens"]
    if case == "custom_tool_call":
        call = final["output"][1]
        assert (call["name"], call["input"], call["namespace"]) == ("exec", "ls -la",
                                                                    "functions")
    if case == "function_call":
        assert orjson.loads(final["output"][1]["arguments"]) == {"path": "a.md"}


async def test_reasoning_counts_inside_the_output_cap(client: TestClient) -> None:
    body = {"model": "gpt-5-mini", "input": "Hi", "max_output_tokens": 16,
            "reasoning": {"effort": "high"}}
    resp = await client.post("/v1/responses", data=orjson.dumps(body),
                             headers={"x-sim-reasoning-tokens": "12", "x-sim-reply-tokens": "9"})
    final = orjson.loads(await resp.read())
    check("Response", final)
    assert final["usage"]["output_tokens"] == 16  # 12 reasoning + 4 text, not 21
    assert final["status"] == "incomplete"


@pytest.mark.parametrize("extra", [{"input": "one"}, {"input": ["a", "b"], "dimensions": 4},
                                   {"input": "x", "encoding_format": "base64"}])
async def test_embeddings_body(client: TestClient, extra: dict) -> None:
    status, raw = await post(client, "/v1/embeddings",
                             {"model": "text-embedding-3-small", **extra})
    assert status == 200
    body = orjson.loads(raw)
    if extra.get("encoding_format") == "base64":
        # the spec types `embedding` as floats; the base64 form is the same object with a string
        assert isinstance(body["data"][0]["embedding"], str)
        body["data"][0]["embedding"] = [0.0]
    check("CreateEmbeddingResponse", body)


async def test_models_list(client: TestClient) -> None:
    resp = await client.get("/v1/models")
    check("ListModelsResponse", orjson.loads(await resp.read()))


@pytest.mark.parametrize("fault", ["429", "500", "529", "context_length_exceeded", "quota"])
async def test_sim_error_bodies(client: TestClient, fault: str) -> None:
    status, raw = await post(client, "/v1/chat/completions",
                             {"model": "gpt-4o-mini", "messages": MSGS},
                             **{"x-sim-fault": fault})
    assert status >= 400
    check("ErrorResponse", orjson.loads(raw))


async def test_sim_invalid_request_body(client: TestClient) -> None:
    status, raw = await post(client, "/v1/chat/completions", {"model": "gpt-4o-mini"})
    assert status == 400
    body = orjson.loads(raw)
    check("ErrorResponse", body)
    assert body["error"]["param"] == "messages"


def _error_classes() -> list[type[errors.TallygateError]]:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, errors.TallygateError)]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_adapter_error_bodies(cls: type[errors.TallygateError]) -> None:
    body = orjson.loads(oai.error_body(cls.code, "Something went wrong.", type=cls.openai_type,
                                       param="messages"))
    check("ErrorResponse", body)
    event = oai.stream_error_event(cls.code, "Mid-stream.", type=cls.openai_type)
    check("ErrorResponse", orjson.loads(event.removeprefix(b"data: ")))
    resp_event = oai.stream_error_event(cls.code, "Mid-stream.", type=cls.openai_type,
                                        route="responses", sequence_number=3)
    check("ResponseErrorEvent", orjson.loads(resp_event.split(b"data: ", 1)[1]))
