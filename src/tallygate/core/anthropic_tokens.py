"""Anthropic Messages requests: an upper-bound estimate (Claude has no public tokenizer).

Text (system, text/thinking blocks, tool_result content, tool names/descriptions/schemas as
JSON, tool_use inputs as JSON) goes through the model's counter — the estimate of
textcount.py for Claude. Framing, chosen as upper bounds of what count_tokens reports:
`PER_MESSAGE` (5) per message and per system prompt, `BASE` (8) per request, and when tools are
present the largest tool-use system prompt Anthropic documents (`TOOLS_SYSTEM_PROMPT`, 530).
Images: images.anthropic_image_tokens (w×h/750, ≤ 1,600). Documents: text sources count their
text; base64 PDFs count the estimate of their base64 payload (a bound, marked inexact).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tallygate.core import images
from tallygate.core.chat_tokens import Tally, json_text
from tallygate.errors import InvalidRequest

PER_MESSAGE = 5
BASE = 8
TOOLS_SYSTEM_PROMPT = 530


def _image(block: Mapping[str, Any], tally: Tally) -> None:
    source = block.get("source")
    size = None
    if isinstance(source, Mapping) and isinstance(source.get("data"), str):
        size = images.base64_image_size(source["data"])
    tally.add(images.anthropic_image_tokens(size), False)


def _document(block: Mapping[str, Any], tally: Tally) -> None:
    source = block.get("source") if isinstance(block.get("source"), Mapping) else {}
    data = source.get("data")
    if source.get("type") == "text" and isinstance(data, str):
        tally.text(data)
    elif source.get("type") == "content":
        _content(source.get("content"), tally)
    else:
        tally.text(json_text(source))
    for key in ("title", "context"):
        if isinstance(block.get(key), str):
            tally.text(block[key])
    tally.exact = False


def _block(block: Any, tally: Tally) -> None:
    if not isinstance(block, Mapping):
        raise InvalidRequest("each content block must be an object")
    kind = block.get("type")
    if kind == "text":
        tally.text(str(block.get("text", "")))
    elif kind == "thinking":
        tally.text(str(block.get("thinking", "")))
    elif kind == "image":
        _image(block, tally)
    elif kind == "document":
        _document(block, tally)
    elif kind in ("tool_use", "server_tool_use"):
        tally.text(str(block.get("name", "")))
        tally.text(json_text(block.get("input", {})))
    elif kind == "tool_result":
        _content(block.get("content"), tally)
    elif kind == "redacted_thinking":
        tally.text(str(block.get("data", "")))
    else:
        tally.text(json_text(block))
        tally.exact = False


def _content(content: Any, tally: Tally) -> None:
    if content is None:
        return
    if isinstance(content, str):
        tally.text(content)
    elif isinstance(content, list):
        for block in content:
            _block(block, tally)
    else:
        raise InvalidRequest("content must be a string or a list of content blocks")


def anthropic_tally(body: Mapping[str, Any], tally: Tally) -> None:
    """Add an Anthropic Messages request body (system, messages, tools) to `tally`."""
    messages = body.get("messages", [])
    if not isinstance(messages, list):
        raise InvalidRequest("messages must be a list", param="messages")
    tally.add(BASE)
    if body.get("system"):
        tally.add(PER_MESSAGE)
        _content(body["system"], tally)
    for message in messages:
        if not isinstance(message, Mapping):
            raise InvalidRequest("each message must be an object", param="messages")
        tally.add(PER_MESSAGE)
        _content(message.get("content"), tally)
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise InvalidRequest("tools must be a list", param="tools")
        tally.add(TOOLS_SYSTEM_PROMPT)
        for tool in tools:
            tally.text(json_text(tool))
