"""Counting: reference equality, the cookbook method, estimates as upper bounds, hostility."""

from __future__ import annotations

import base64
import json
import math
import os
import random
import string
import threading
from typing import Any

import bpe_openai
import pytest

from tallygate.core import bpe, tokens
from tallygate.core.catalog import resolve_model
from tallygate.core.chat_tokens import CHAT_REPLY_PRIMING
from tallygate.errors import InputTooLarge, InvalidRequest
from tests.support.corpus import CORPUS

GPT4O = resolve_model("gpt-4o")
CLAUDE = resolve_model("claude-sonnet-4-5")


@pytest.mark.parametrize(("model", "enc"), [("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")])
def test_text_counts_equal_reference(model: str, enc: str) -> None:
    ref = bpe_openai.get_encoding(enc)
    for text in CORPUS:
        got = tokens.count_text(text, model)
        assert got.exact and got.encoding == enc
        assert got.tokens == len(ref.encode_ordinary(text)), text


# --- an independent implementation of the cookbook, written here from its text -----------
def cookbook_messages(messages, enc) -> int:
    n = 0
    for message in messages:
        n += 3
        for key, value in message.items():
            n += len(enc.encode_ordinary(value))
            if key == "name":
                n += 1
    return n + 3


def cookbook_tools(functions, enc, func_init) -> int:
    n = 0
    for f in functions:
        n += func_init
        function = f["function"]
        desc = function["description"]
        if desc.endswith("."):
            desc = desc[:-1]
        n += len(enc.encode_ordinary(function["name"] + ":" + desc))
        props = function["parameters"]["properties"]
        if len(props) > 0:
            n += 3
            for key, spec in props.items():
                n += 3
                if "enum" in spec:
                    n += -3
                    for item in spec["enum"]:
                        n += 3 + len(enc.encode_ordinary(item))
                p_desc = spec["description"]
                if p_desc.endswith("."):
                    p_desc = p_desc[:-1]
                n += len(enc.encode_ordinary(f"{key}:{spec['type']}:{p_desc}"))
    return n + 12 if functions else n


CONVERSATION = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together."},
    {"role": "user", "name": "bob", "content": '東京の天気は？ 🌧️ Also: {"json": [1, 2]}'},
    {"role": "assistant", "content": "It's raining in Tokyo."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean."},
]
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "enc", "func_init"), [("gpt-4o", "o200k_base", 7), ("gpt-4", "cl100k_base", 10)]
)
def test_chat_equals_cookbook(model: str, enc: str, func_init: int) -> None:
    ref = bpe_openai.get_encoding(enc)
    got = tokens.count_openai_chat(CONVERSATION, model)
    assert got.exact and got.tokens == cookbook_messages(CONVERSATION, ref)
    with_tools = tokens.count_openai_chat(CONVERSATION, model, tools=WEATHER_TOOLS)
    expected = cookbook_messages(CONVERSATION, ref) + cookbook_tools(WEATHER_TOOLS, ref, func_init)
    assert with_tools.tokens == expected


@pytest.mark.parametrize(
    ("model", "published"),
    [("gpt-4o", 101), ("gpt-4o-mini", 101), ("gpt-3.5-turbo", 105), ("gpt-4", 105)],
)
def test_cookbook_published_tool_totals(model: str, published: int) -> None:
    # The cookbook's "How to count tokens with tiktoken" prints these API-verified totals.
    got = tokens.count_openai_chat(WEATHER_MESSAGES, model, tools=WEATHER_TOOLS)
    assert got.tokens == published


def test_cookbook_published_message_example() -> None:
    # The cookbook's example conversation: 129 prompt tokens on gpt-4o / gpt-4 families.
    example = [
        {
            "role": "system",
            "content": "You are a helpful, pattern-following assistant that translates "
            "corporate jargon into plain English.",
        },
        {
            "role": "system",
            "name": "example_user",
            "content": "New synergies will help drive top-line growth.",
        },
        {
            "role": "system",
            "name": "example_assistant",
            "content": "Things working well together will increase revenue.",
        },
        {
            "role": "system",
            "name": "example_user",
            "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",  # noqa: E501
        },
        {
            "role": "system",
            "name": "example_assistant",
            "content": "Let's talk later when we're less busy about how to do better.",
        },
        {
            "role": "user",
            "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",  # noqa: E501
        },
    ]
    assert tokens.count_openai_chat(example, "gpt-4").tokens == 129
    assert tokens.count_openai_chat(example, "gpt-4o").tokens == 124


def test_tool_calls_images_and_nested_schemas_are_bounds() -> None:
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
            ],
        },
    ]
    got = tokens.count_openai_chat(msgs, "gpt-4o")
    assert not got.exact and got.tokens >= 85 + 8 * 170
    low = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "low"}}],
        }
    ]
    assert tokens.count_openai_chat(low, "gpt-4o").tokens == 3 + 1 + 85 + 3  # role "user" = 1
    def tool_g(o: dict[str, Any]) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": "g", "description": "d",
            "parameters": {"type": "object", "properties": {"o": o}}}}

    nested = [tool_g({"type": "object", "description": "x",
                      "properties": {"k": {"type": "string", "description": "y"}}})]
    flat = [tool_g({"type": "object", "description": "x"})]
    flat_n = tokens.count_openai_chat([], "gpt-4o", tools=flat).tokens
    nested_c = tokens.count_openai_chat([], "gpt-4o", tools=nested)
    assert not nested_c.exact and nested_c.tokens > flat_n


def test_png_size_gives_tile_formula() -> None:
    png = (
        b"\x89PNG\r\n\x1a\n"
        + b"\x00\x00\x00\rIHDR"
        + (1024).to_bytes(4, "big")
        + (1024).to_bytes(4, "big")
    )
    url = "data:image/png;base64," + base64.b64encode(png + b"\x00" * 16).decode()
    msg = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url, "detail": "high"}}],
        }
    ]
    # 1024² → 768² → 2×2 tiles → 85 + 4×170
    assert tokens.count_openai_chat(msg, "gpt-4o").tokens == 3 + 1 + 85 + 680 + 3


PROSE = (CORPUS * 3) + [
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20,
    "SELECT id, name FROM users WHERE created_at > now() - interval '7 days';",
    "Привет, как дела? Это проверка токенизатора на кириллице.",
    "مرحبا بك في عالم النماذج اللغوية الكبيرة",
    "नमस्ते, यह एक परीक्षण वाक्य है।",
    "한국어 문장도 세어 봅니다. 괜찮나요?",
    base64.b64encode(os.urandom(3000)).decode(),
]


def test_estimate_is_an_upper_bound_on_public_tokenizers() -> None:
    o200k = bpe_openai.get_encoding("o200k_base")
    cl100k = bpe_openai.get_encoding("cl100k_base")
    for text in PROSE:
        est = tokens.count_text(text, CLAUDE)
        assert not est.exact and est.encoding == "estimate"
        assert est.tokens >= len(o200k.encode_ordinary(text))
        assert est.tokens >= len(cl100k.encode_ordinary(text))
        assert est.tokens >= math.ceil(len(text) / 4)
    assert tokens.count_text("x", "gemini-2.5-pro").exact is False


def test_anthropic_messages_shape() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "need the tool"},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "18C, cloudy"}],
                    }
                ],
            },
        ],
        "tools": [
            {"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}
        ],
    }
    got = tokens.count_anthropic_messages(body)
    assert not got.exact and got.tokens > 530
    same = tokens.count_request("anthropic", "/v1/messages/count_tokens", body, CLAUDE)
    assert same == got
    with pytest.raises(InvalidRequest):
        tokens.count_anthropic_messages({"messages": "nope"})


def test_unknown_turns_count_like_user_turns() -> None:
    """A turn with a role the counter does not model costs what the same turn as a user
    turn costs (both protocols); an unknown block costs at least its JSON text."""
    turn = {"content": "environment: linux, cwd /repo"}
    for protocol, route, info in (("anthropic", "messages", CLAUDE),
                                  ("openai", "chat/completions", GPT4O)):
        def count(role: str, info: Any = info, protocol: str = protocol,
                  route: str = route) -> int:
            body = {"messages": [{"role": "user", "content": "hi"}, {"role": role, **turn}]}
            return tokens.count_request(protocol, route, body, info).tokens
        assert count("system") >= count("user")
        assert count("observer") >= count("user") - 1  # (the role's own text differs)
    block = {"type": "server_tool_result_2027", "payload": {"rows": ["a" * 40] * 5}}
    plain = {"model": "claude-sonnet-4-5",
             "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}
    more = {**plain,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, block]}]}
    extra = (tokens.count_anthropic_messages(more).tokens
             - tokens.count_anthropic_messages(plain).tokens)
    compact = json.dumps(block, separators=(",", ":"))
    assert extra >= tokens.count_text(compact, "claude-sonnet-4-5").tokens
    assert not tokens.count_anthropic_messages(more).exact


def test_custom_and_namespace_tools_count_their_grammar() -> None:
    """A Responses `custom` tool (Codex's `exec`, a Lark grammar) has a name like a
    function, but its grammar must be counted too; namespace tools by their JSON."""
    grammar = "start: cmd\ncmd: WORD+\n" + "WORD: /[a-z]+/\n" * 200
    custom = {"type": "custom", "name": "exec", "description": "run",
              "format": {"type": "grammar", "syntax": "lark", "definition": grammar}}
    bare = {"type": "custom", "name": "exec", "description": "run"}
    def count(tools: list[Any]) -> int:
        return tokens.count_request("openai", "responses", {"input": "x", "tools": tools},
                                    GPT4O).tokens
    assert count([custom]) - count([bare]) >= tokens.count_text(grammar, GPT4O).tokens
    namespace = {"type": "namespace", "name": "functions", "description": "fs",
                 "tools": [custom]}
    assert count([namespace]) >= count([custom])
    # Codex sends its tools as an `additional_tools` input item: counted by its JSON.
    item = {"type": "additional_tools", "role": "developer", "tools": [namespace]}
    body = {"input": [item, {"role": "user", "content": "x"}]}
    got = tokens.count_request("openai", "responses", body, GPT4O)
    assert got.tokens >= tokens.count_text(grammar, GPT4O).tokens and not got.exact


def test_count_request_routes() -> None:
    chat = {"model": "gpt-4o", "messages": CONVERSATION}
    assert tokens.count_request("openai", "/v1/chat/completions", chat, GPT4O) == (
        tokens.count_openai_chat(CONVERSATION, GPT4O)
    )
    resp = tokens.count_request("openai", "/v1/responses", {"input": "hi there"}, GPT4O)
    assert (
        resp.tokens
        == tokens.count_openai_chat([{"role": "user", "content": "hi there"}], GPT4O).tokens
    )
    items = {
        "instructions": "be brief",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
        ],
    }
    assert tokens.count_request("openai", "/v1/responses", items, GPT4O).tokens > 6
    emb = resolve_model("text-embedding-3-small")
    got = tokens.count_request("openai", "/v1/embeddings", {"input": ["hello world", "x"]}, emb)
    assert got.tokens == 3 and got.exact
    assert tokens.count_request("openai", "/v1/embeddings", {"input": [1, 2, 3]}, emb).tokens == 3
    fmt = dict(
        chat, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    )
    assert tokens.count_request("openai", "/v1/chat/completions", fmt, GPT4O).tokens > (
        tokens.count_openai_chat(CONVERSATION, GPT4O).tokens
    )
    with pytest.raises(InvalidRequest):
        tokens.count_request("openai", "/v1/images", {}, GPT4O)


def test_message_cache_makes_recount_cheap() -> None:
    tokens.clear_message_cache()
    convo = [
        {"role": "user" if i % 2 else "assistant", "content": f"turn {i} " * 50} for i in range(100)
    ]
    full = tokens.count_openai_chat(convo, GPT4O)
    first = tokens.message_cache_info()
    assert first.misses == 100 and first.hits == 0
    convo.append({"role": "user", "content": "one more"})
    again = tokens.count_openai_chat(convo, GPT4O)
    info = tokens.message_cache_info()
    assert info.hits == 100 and info.misses == 101  # only the new turn was counted
    assert again.tokens == full.tokens + tokens.message_tokens(convo[-1], GPT4O)
    total = sum(tokens.message_tokens(m, GPT4O) for m in convo) + CHAT_REPLY_PRIMING
    assert total == again.tokens


def test_hostile_inputs_are_bounded() -> None:
    with pytest.raises(InputTooLarge, match="cap"):
        tokens.count_text("a" * 10_000_001)
    with pytest.raises(InputTooLarge):
        tokens.count_text("a" * 101, max_chars=100)
    one_letter = tokens.count_text("a" * 2_000_000)
    assert one_letter.tokens > 0 and not one_letter.exact
    spaces = tokens.count_text(" " * 1_000_000 + "x")  # tiktoken's own regex overflows here
    assert spaces.tokens > 0
    ref = bpe.get_encoding("o200k_base")  # bpe_openai refuses inputs this long
    for run in ["z" * 5000, "".join(random.choices(string.ascii_letters, k=5000)), "!?" * 3000]:
        got = tokens.count_text("start " + run + " end")
        assert got.tokens >= len(ref.encode_ordinary("start " + run + " end"))
    blob = base64.b64encode(os.urandom(750_000)).decode()  # 1 MB of base64: exact
    assert tokens.count_text(blob).tokens == len(ref.encode_ordinary(blob))
    assert tokens.count_text("bad \ud800 surrogate").tokens > 0
    deep: dict = {"x": 1}
    for _ in range(200):
        deep = {"x": deep}
    with pytest.raises(InvalidRequest, match="nests deeper"):
        tokens.count_openai_chat([{"role": "user", "content": "x", "extra": deep}], GPT4O)
    with pytest.raises(InputTooLarge):
        tokens.count_openai_chat(
            [{"role": "user", "content": "a" * 600}] * 10, GPT4O, max_chars=5000
        )


async def test_async_api_runs_big_counts_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # Which thread does the counting: small texts inline, big ones in a worker thread.
    # (Asserting on thread identity, not on timing, keeps this test deterministic.)
    seen: list[int] = []
    real = tokens.count_text

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(tokens, "count_text", recording)
    small = await tokens.acount_text("hello")
    assert small.tokens == 1 and seen == [threading.get_ident()]
    big = await tokens.acount_text("word " * 400_000)
    assert seen[1] != threading.get_ident()
    assert big == real("word " * 400_000)
    body = {"messages": [{"role": "user", "content": "hello " * 10_000}]}
    got = await tokens.acount_request("openai", "/v1/chat/completions", body, GPT4O)
    assert got == tokens.count_request("openai", "/v1/chat/completions", body, GPT4O)
