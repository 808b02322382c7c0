"""OpenAI chat framing: the cookbook's counting method, tools, content parts, message cache.

The OpenAI cookbook ("How to count tokens with tiktoken"): every message costs
`TOKENS_PER_MESSAGE` (3) plus the tokens of each of its string values (role, content, name,
tool_call_id …); a `name` costs `TOKENS_PER_NAME` (1) more; the reply is primed with
`CHAT_REPLY_PRIMING` (3). Tool definitions follow the cookbook's `num_tokens_for_tools`
constants (o200k models: function 7, property 3 + 3 per key, enum −3 + 3 per item, end 12;
cl100k models: function 10). Beyond the cookbook, counted as an upper bound and marked
`exact=False`: nested object properties (same constants, recursively) and other schema keys
(items, anyOf … as their JSON text); assistant `tool_calls` (the JSON of each function:
name and arguments); content parts (text exactly; images by the documented tile formula,
see images.py; `input_audio` and `file` parts as the estimate of their base64 payload plus
their other fields, a documented bound — an audio second is ~10 tokens and base64 carries far
more than 10 chars per second); non-string values as their JSON text.

Per-message cache: `message_tokens` keys a bounded LRU by (encoding, image profile, the
message's canonical JSON — itself up to 8 KiB, its blake2b digest above), so a conversation
re-sent with one new turn recounts one turn.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson

from tallygate.core import images
from tallygate.core.textcount import TextCounter, check_size, counter_for
from tallygate.errors import InvalidRequest
from tallygate.types import ModelInfo

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
CHAT_REPLY_PRIMING = 3
MAX_DEPTH = 32
MESSAGE_CACHE_SIZE = 4_096
INLINE_KEY_BYTES = 8_192

# The cookbook's num_tokens_for_tools constants, by encoding.
_PROPS = {"prop_init": 3, "prop_key": 3, "enum_init": -3, "enum_item": 3}
_TOOL_CONSTANTS = {
    "o200k_base": {"func_init": 7, **_PROPS},
    "cl100k_base": {"func_init": 10, **_PROPS},
}
_FUNC_END = 12
_SCHEMA_KEYS_MODELLED = frozenset({"type", "description", "enum", "properties"})


class OverInlineBudget(Exception):
    """More text to tokenize than `inline_budget` allows on this thread (the caller
    finishes the count in a worker thread; what was counted so far is cached)."""


# Characters of text still allowed to be tokenized here (None: no limit). A context
# variable: a worker thread started by the caller does not inherit a budget it set.
_BUDGET: ContextVar[list[int] | None] = ContextVar("tallygate_inline_budget", default=None)


@contextmanager
def inline_budget(chars: int) -> Iterator[None]:
    """Within the block, tokenizing more than `chars` characters in all raises
    OverInlineBudget (cached messages cost nothing)."""
    token = _BUDGET.set([chars])
    try:
        yield
    finally:
        _BUDGET.reset(token)


def spend(chars: int) -> None:
    """About to tokenize `chars` characters: OverInlineBudget past the block's budget."""
    budget = _BUDGET.get()
    if budget is not None:
        budget[0] -= chars
        if budget[0] < 0:
            raise OverInlineBudget


class Tally:
    """Accumulates tokens, exactness and characters (against the size cap) of one request."""

    __slots__ = ("chars", "counter", "exact", "max_chars", "tokens")

    def __init__(self, counter: TextCounter, max_chars: int | None) -> None:
        self.counter = counter
        self.max_chars = max_chars
        self.tokens = 0
        self.exact = counter.exact
        self.chars = 0

    def charge(self, chars: int) -> None:
        self.chars += chars
        check_size(self.chars, self.max_chars)

    def text(self, value: str) -> int:
        """Count a string, add it, and return its tokens."""
        self.charge(len(value))
        spend(len(value))
        n, exact = self.counter.count(value)
        self.tokens += n
        self.exact = self.exact and exact
        return n

    def add(self, tokens: int, exact: bool = True) -> None:
        self.tokens += tokens
        self.exact = self.exact and exact


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """InvalidRequest when JSON-like data nests deeper than `limit` (iterative walk)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise InvalidRequest(f"request content nests deeper than {limit} levels")
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)


def json_text(value: Any) -> str:
    """Canonical JSON text of request data (sorted keys); InvalidRequest if not JSON data."""
    check_depth(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:  # orjson refuses lone surrogates; the stdlib escapes them
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"request content is not valid JSON data: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CacheInfo:
    hits: int
    misses: int
    size: int
    maxsize: int


class _MessageCache:
    def __init__(self, maxsize: int) -> None:
        self._data: OrderedDict[tuple[str, tuple[int, int], bytes], tuple[int, bool, int]]
        self._data = OrderedDict()
        self._lock = threading.Lock()
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, tuple[int, int], bytes]) -> tuple[int, bool, int] | None:
        with self._lock:
            found = self._data.get(key)
            if found is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: tuple[str, tuple[int, int], bytes], value: tuple[int, bool, int]) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self.hits, self.misses, len(self._data), self.maxsize)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0


_cache = _MessageCache(MESSAGE_CACHE_SIZE)


def message_cache_info() -> CacheInfo:
    return _cache.info()


def clear_message_cache() -> None:
    _cache.clear()


def _part_tokens(part: Any, tally: Tally, profile: tuple[int, int]) -> None:
    if isinstance(part, str):
        tally.text(part)
        return
    if not isinstance(part, Mapping):
        raise InvalidRequest("a content part must be an object or a string")
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        tally.text(part["text"])
    elif kind == "refusal" and isinstance(part.get("refusal"), str):
        tally.text(part["refusal"])
    elif kind == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, Mapping) else str(image or "")
        detail = image.get("detail", "auto") if isinstance(image, Mapping) else "auto"
        tally.charge(min(len(url), 1_000))  # image bytes are not counted as text
        size = images.data_url_size(url) if isinstance(url, str) else None
        tally.add(*images.openai_image_tokens(size, str(detail), profile))
    else:  # input_audio, file and unknown parts: their JSON text, a documented bound
        bound = counter_for(None)
        text = json_text(part)
        tally.charge(len(text))
        spend(len(text))
        tally.add(bound.count(text)[0], False)


def _value_tokens(key: str, value: Any, tally: Tally, profile: tuple[int, int]) -> None:
    if value is None:
        return
    if isinstance(value, str):
        tally.text(value)
        if key == "name":
            tally.add(TOKENS_PER_NAME)
    elif key == "content" and isinstance(value, list):
        for part in value:
            _part_tokens(part, tally, profile)
    elif key == "tool_calls" and isinstance(value, list):
        for call in value:
            fn = call.get("function", call) if isinstance(call, Mapping) else call
            tally.text(json_text(fn))
            tally.exact = False
    else:
        tally.text(json_text(value))
        tally.exact = False


def count_message(message: Mapping[str, Any], tally: Tally, profile: tuple[int, int]) -> None:
    """Add one message (its per-message overhead included) to `tally`, uncached."""
    if not isinstance(message, Mapping):
        raise InvalidRequest("each message must be an object")
    tally.add(TOKENS_PER_MESSAGE)
    for key, value in message.items():
        _value_tokens(str(key), value, tally, profile)


def cached_message(
    message: Mapping[str, Any],
    counter: TextCounter,
    profile: tuple[int, int],
    max_chars: int | None,
) -> tuple[int, bool, int]:
    """(tokens, exact, chars) of one message, through the per-process LRU."""
    if not isinstance(message, Mapping):
        raise InvalidRequest("each message must be an object")
    canonical = _canonical(message)
    # Small messages are their own key (a dict hash plus an exact compare: no collision
    # to engineer, 5× cheaper than a digest); big ones are keyed by a blake2b digest so
    # the cache's memory stays bounded (MESSAGE_CACHE_SIZE × INLINE_KEY_BYTES at most).
    digest = (canonical if len(canonical) <= INLINE_KEY_BYTES
              else hashlib.blake2b(canonical, digest_size=16).digest())
    key = (counter.encoding, profile, digest)
    found = _cache.get(key)
    if found is not None:
        check_size(found[2], max_chars)
        return found
    tally = Tally(counter, max_chars)
    count_message(message, tally, profile)
    result = (tally.tokens, tally.exact, tally.chars)
    _cache.put(key, result)
    return result


def _canonical(message: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes; flat string-only messages skip the depth walk (hot path)."""
    if all(isinstance(v, str) for v in message.values()):
        try:
            return orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            pass
    return json_text(message).encode("utf-8", "surrogatepass")


def message_tokens(message: Mapping[str, Any], model: ModelInfo) -> int:
    """One chat message's tokens including its per-message overhead (cached)."""
    return cached_message(message, counter_for(model.encoding), profile_for(model), None)[0]


def profile_for(model: ModelInfo) -> tuple[int, int]:
    return images.openai_profile(model.name)


def _schema_tokens(props: Mapping[str, Any], tally: Tally, const: Mapping[str, int], depth: int):
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"tool schema nests deeper than {MAX_DEPTH} levels")
    tally.add(const["prop_init"])
    for key, raw in props.items():
        tally.add(const["prop_key"])
        spec = raw if isinstance(raw, Mapping) else {}
        enum = spec.get("enum")
        if isinstance(enum, list):
            tally.add(const["enum_init"])
            for item in enum:
                tally.add(const["enum_item"])
                tally.text(item if isinstance(item, str) else json_text(item))
        desc = str(spec.get("description", ""))
        desc = desc.removesuffix(".")
        typ = spec.get("type", "")
        tally.text(f"{key}:{typ if isinstance(typ, str) else json_text(typ)}:{desc}")
        nested = spec.get("properties")
        if isinstance(nested, Mapping) and nested:
            _schema_tokens(nested, tally, const, depth + 1)
            tally.exact = False
        for extra in sorted(set(spec) - _SCHEMA_KEYS_MODELLED):
            tally.text(json_text(spec[extra]))
            tally.exact = False


def _is_function(tool: Mapping[str, Any], fn: Any) -> bool:
    """A function tool the cookbook's formula models: `{"type": "function", "function":
    {...}}`, or a legacy `functions` entry (no type). A `custom` tool also has a name but
    carries a grammar the formula would not see."""
    if not isinstance(fn, Mapping) or "name" not in fn:
        return False
    return "function" in tool or tool.get("type", "function") == "function"


def tools_tokens(tools: Sequence[Any], tally: Tally) -> None:
    """The cookbook's num_tokens_for_tools, extended to nested schemas (see module doc)."""
    if not tools:
        return
    const = _TOOL_CONSTANTS.get(tally.counter.encoding, _TOOL_CONSTANTS["o200k_base"])
    for tool in tools:
        if not isinstance(tool, Mapping):
            raise InvalidRequest("each tool must be an object")
        fn = tool.get("function", tool)
        if not _is_function(tool, fn):
            # Built-in, custom (grammar) and namespace tools: their JSON, a bound.
            tally.text(json_text(tool))
            tally.exact = False
            continue
        tally.add(const["func_init"])
        desc = str(fn.get("description", "") or "")
        tally.text(f"{fn['name']}:{desc.removesuffix('.')}")
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, Mapping) else None
        if isinstance(props, Mapping) and props:
            _schema_tokens(props, tally, const, 1)
    tally.add(_FUNC_END)
