"""What `count` and `check` count: a file's bytes as a chat request (a JSON object with
`messages`, counted with the request framing the gateway counts) or as plain text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tallygate.core.tokens import (
    count_anthropic_messages,
    count_request,
    count_text,
    counts_as_anthropic,
)
from tallygate.types import ModelInfo

BINARY_PROBE = 8_192


def is_binary(raw: bytes) -> bool:
    """A NUL byte near the start: not a prompt (images, archives, compiled files)."""
    return b"\x00" in raw[:BINARY_PROBE]


def chat_body(text: str) -> dict[str, Any] | None:
    """The parsed JSON when the text is a chat request (an object with `messages`)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("messages"), list) else None


@dataclass(frozen=True, slots=True)
class SourceCount:
    kind: str  # "text" | "chat" | "anthropic-chat"
    tokens: int
    exact: bool
    encoding: str


def count_bytes(raw: bytes, info: ModelInfo, *, max_chars: int | None = None) -> SourceCount:
    """Tokens of a file: a chat JSON counts as a request, anything else as text. Invalid
    UTF-8 is replaced (counted as U+FFFD), never an error."""
    text = raw.decode("utf-8", errors="replace")
    body = chat_body(text)
    if body is None:
        result = count_text(text, info, max_chars=max_chars)
        kind = "text"
    elif counts_as_anthropic(info):
        result = count_anthropic_messages(body, info, max_chars=max_chars)
        kind = "anthropic-chat"
    else:
        result = count_request("openai", "chat/completions", body, info, max_chars=max_chars)
        kind = "chat"
    return SourceCount(kind, result.tokens, result.exact, result.encoding)
