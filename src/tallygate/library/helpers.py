"""The public helpers of `import tallygate`: count, trim and price without a Governor.

    tallygate.count_tokens(messages, model="gpt-4o")       -> int
    tallygate.trim(messages, max_tokens=4000, model="gpt-4o") -> list of messages
    tallygate.estimate_cost("gpt-4o", 1200, 300)           -> Decimal USD
    tallygate.chunk(text, max_tokens=3000, model="gpt-4o") (core.chunk.chunk)

Counts are exact for OpenAI models (tiktoken) and tallygate's upper-bound estimate for
models without a public tokenizer (Claude, Gemini); for the `exact` flag and the encoding
use `tallygate.core.tokens` (count_text / count_openai_chat return a `Count`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from tallygate.core.catalog import default_catalog, resolve_model
from tallygate.core.tokens import (
    CHAT_REPLY_PRIMING,
    count_anthropic_messages,
    count_openai_chat,
    count_text,
    counts_as_anthropic,
    message_tokens,
)
from tallygate.core.trim import trim_messages
from tallygate.errors import InvalidRequest
from tallygate.types import Usage
from tallygate.units import usd

DEFAULT_MODEL = "gpt-4o"


def _anthropic_body(messages: Sequence[Any], model: str) -> dict[str, Any]:
    """Chat-style messages as a Messages body: system turns go to the top-level `system`."""
    system = [m.get("content") for m in messages
              if isinstance(m, Mapping) and m.get("role") in ("system", "developer")]
    turns = [m for m in messages
             if not (isinstance(m, Mapping) and m.get("role") in ("system", "developer"))]
    body: dict[str, Any] = {"model": model, "messages": turns}
    texts = [s for s in system if isinstance(s, str)]
    if texts:
        body["system"] = "\n\n".join(texts)
    return body


def count_tokens(messages_or_text: str | Sequence[Mapping[str, Any]] | Mapping[str, Any],
                 model: str = DEFAULT_MODEL) -> int:
    """Input tokens of `messages_or_text` for `model`, as an int.

    - a string: its tokens (no chat framing);
    - a list of chat messages: the prompt's tokens with the per-message framing
      (OpenAI cookbook method; for Claude models, the Anthropic estimate);
    - a request body (a mapping with `messages`, optionally `tools`/`system`): the same,
      tools and system included."""
    info = resolve_model(model)
    value = messages_or_text
    if isinstance(value, str):
        return count_text(value, info).tokens
    if isinstance(value, Mapping):
        body = dict(value)
        if counts_as_anthropic(info):
            return count_anthropic_messages({**body, "model": info.name}, info).tokens
        return count_openai_chat(body.get("messages") or [], info, tools=body.get("tools"),
                                 functions=body.get("functions")).tokens
    if isinstance(value, list | tuple):
        if counts_as_anthropic(info):
            return count_anthropic_messages(_anthropic_body(value, info.name), info).tokens
        return count_openai_chat(list(value), info).tokens
    raise InvalidRequest(
        f"count_tokens() takes a string, a list of messages or a request body, "
        f"got {type(value).__name__}")


def trim(messages: Sequence[Mapping[str, Any]], max_tokens: int,
         model: str = DEFAULT_MODEL) -> list[Mapping[str, Any]]:
    """The conversation without its oldest turns, so that it fits `max_tokens` (framing
    included). System prompts, the newest turn and the question being answered are always
    kept, and a tool call is never split from its result. Raises InputBudgetExceeded when
    even those do not fit."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise InvalidRequest(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
    if not isinstance(messages, list | tuple):
        raise InvalidRequest("messages must be a list of chat messages", param="messages")
    info = resolve_model(model)
    result = trim_messages(list(messages), max_tokens, lambda m: message_tokens(m, info),
                           overhead=CHAT_REPLY_PRIMING)
    return list(result.messages)


def estimate_cost(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """USD for a call of that size at the catalog's list prices, exact to the nano-dollar
    (rounded up, as the ledger charges)."""
    for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequest(f"{name} must be a non-negative integer, got {value!r}")
    info = default_catalog().get(model)
    nano = info.cost_nusd(Usage(input_tokens=input_tokens, output_tokens=output_tokens))
    return usd(nano)
