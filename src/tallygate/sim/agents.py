"""What coding agents need from the simulated provider, shared by both protocols:
deciding a tool call, the reasoning/thinking share of a reply, and prompt caches.

Tool calls are asked for in the conversation itself, so they work through any gateway
and from a real CLI's prompt: the last user turn containing `[sim-tool: NAME ARGS]`
(ARGS: a JSON object for function tools, free text for custom tools; NAME `*` = the
first tool) is answered with that call; a turn that carries a tool result is answered
with text. A forced `tool_choice` calls a tool too.

Prompt caches, deterministic:
- Anthropic: every `cache_control` breakpoint (tools → system → messages order) marks a
  prefix. The longest prefix seen before is read (`cache_read_input_tokens`); the last
  breakpoint's prefix beyond it is written (`cache_creation_input_tokens`). Anthropic's
  minimum cacheable length is not modelled.
- OpenAI: requests with a `prompt_cache_key` whose input extends the previous input of
  that key read the previous prompt from the cache, in 128-token steps from 1,024 (the
  documented automatic caching)."""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

MARKER = re.compile(r"\[sim-tool:\s*([A-Za-z0-9_.*-]+)\s*")
CACHE_ENTRIES = 4_096
OPENAI_CACHE_MIN = 1_024
OPENAI_CACHE_STEP = 128


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    kind: str  # "function" (JSON arguments) | "custom" (free text input)
    arguments: str  # JSON text for functions, the raw input for custom tools
    namespace: str | None = None


# --------------------------------------------------------------------------- tools


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(p.get("text")) if isinstance(p, Mapping) else _text_of(p)
                        for p in content)
    return ""


def _has_result(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(p, Mapping) and p.get("type") == "tool_result" for p in content)


_INSTRUCTION_ROLES = ("system", "developer")


def _last_turn(turns: list[Any]) -> Mapping[str, Any] | None:
    """The last conversational turn: instruction turns after it (Claude Code's
    mid-conversation system turn, developer messages) are skipped."""
    for turn in reversed(turns):
        if not isinstance(turn, Mapping):
            return None
        if turn.get("type", "message") == "message" and turn.get("role") in _INSTRUCTION_ROLES:
            continue
        return turn
    return None


def marker_in_last_turn(turns: list[Any]) -> tuple[str, str] | None:
    """(name, args) of a `[sim-tool: …]` marker in the last turn when it is a user turn
    with no tool result; None otherwise."""
    last = _last_turn(turns)
    if last is None or last.get("role", "user") != "user":
        return None
    if last.get("type", "message") != "message":
        return None
    if _has_result(last.get("content")):
        return None
    text = _text_of(last.get("content"))
    found = MARKER.search(text)
    if found is None:
        return None
    rest = text[found.end():]
    if rest.startswith("{"):
        try:
            obj = orjson.loads(rest[: _json_end(rest)])
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return found.group(1), orjson.dumps(obj).decode()
    return found.group(1), rest.split("]", 1)[0].strip()


def _json_end(text: str) -> int:
    depth, in_str, escape = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            escape = not escape and ch == "\\"
            if ch == '"' and not escape:
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def flat_tools(tools: Any, namespace: str | None = None) -> Iterator[tuple[dict, str | None]]:
    """(tool, namespace) for every tool, namespaces opened."""
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "namespace":
            yield from flat_tools(tool.get("tools"), str(tool.get("name") or ""))
        else:
            yield tool, namespace


def pick_tool(tools: list[tuple[dict, str | None]], name: str, args: str) -> ToolCall | None:
    for tool, namespace in tools:
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        tool_name = str(fn.get("name") or "")
        if name not in ("*", tool_name) or not tool_name:
            continue
        if tool.get("type") == "custom":
            return ToolCall(tool_name, "custom", args or "true", namespace)
        schema = fn.get("input_schema") or fn.get("parameters") or {}
        return ToolCall(tool_name, "function", args or example_arguments(schema), namespace)
    return None


_EXAMPLES: dict[str, Any] = {"string": "sim", "integer": 1, "number": 1, "boolean": True,
                             "array": [], "object": {}}


def example_arguments(schema: Any) -> str:
    """JSON arguments filling a schema's required properties with plain values."""
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    required = schema.get("required") if isinstance(schema, Mapping) else None
    out: dict[str, Any] = {}
    if isinstance(props, Mapping) and isinstance(required, list):
        for key in required:
            spec = props.get(key) if isinstance(props.get(key), Mapping) else {}
            enum = spec.get("enum")
            kind = spec.get("type")
            out[str(key)] = enum[0] if isinstance(enum, list) and enum else _EXAMPLES.get(
                kind if isinstance(kind, str) else "string", "sim")
    return orjson.dumps(out).decode()


# --------------------------------------------------------------------------- shares


def split_output(cap: int | None, reply: int, thinking: int) -> tuple[int, int, bool]:
    """(thinking tokens, reply tokens, capped?): thinking tokens are output tokens and
    count inside the cap, as the providers count them; the reply gets what is left."""
    if cap is None or cap <= 0 or thinking + reply <= cap:
        return thinking, reply, False
    thinking = min(thinking, max(0, cap - 1))
    return thinking, max(1, cap - thinking), True


def signature(seed: int) -> str:
    return hashlib.sha256(f"sim-thinking-{seed}".encode()).hexdigest()


# --------------------------------------------------------------------------- caches


class LruSet:
    """A bounded map of the prompt prefixes (and prompts) the simulator has seen."""

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self._data: OrderedDict[str, Any] = OrderedDict()
        self.size = size

    def get(self, key: str) -> Any:
        found = self._data.get(key)
        if found is not None:
            self._data.move_to_end(key)
        return found

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)


def anthropic_prefixes(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One truncated body per cache_control breakpoint, shortest first."""
    out: list[dict[str, Any]] = []
    base = {"model": body.get("model")}
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    for i, tool in enumerate(tools):
        if isinstance(tool, Mapping) and tool.get("cache_control"):
            out.append({**base, "tools": tools[: i + 1], "messages": []})
    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            if isinstance(block, Mapping) and block.get("cache_control"):
                out.append({**base, "tools": tools, "system": system[: i + 1], "messages": []})
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    for m, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        for b, block in enumerate(content if isinstance(content, list) else []):
            if isinstance(block, Mapping) and block.get("cache_control"):
                cut = {**message, "content": content[: b + 1]}
                out.append({**base, "tools": tools, "system": system,
                            "messages": [*messages[:m], cut]})
    return out


def prefix_key(prefix: Mapping[str, Any]) -> str:
    canonical = orjson.dumps(prefix, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def openai_cached(seen: LruSet, body: Mapping[str, Any], prompt: int) -> int:
    """Cached input tokens of an OpenAI request with a prompt_cache_key (see module doc);
    remembers this request's input for the next one."""
    key = body.get("prompt_cache_key")
    items = body.get("input") if "input" in body else body.get("messages")
    if not isinstance(key, str) or not isinstance(items, list):
        return 0
    head = prefix_key({"instructions": body.get("instructions"), "tools": body.get("tools"),
                       "model": body.get("model")})
    digests = [prefix_key({"item": item}) for item in items]
    previous = seen.get(f"{key}:{head}")
    seen.put(f"{key}:{head}", (digests, prompt))
    if previous is None:
        return 0
    old_items, old_prompt = previous
    if digests[: len(old_items)] != old_items:
        return 0
    cacheable = min(old_prompt, prompt)
    if cacheable < OPENAI_CACHE_MIN:
        return 0
    return cacheable // OPENAI_CACHE_STEP * OPENAI_CACHE_STEP
