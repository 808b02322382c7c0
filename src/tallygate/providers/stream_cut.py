"""Ending a stream early, cleanly: the protocol's own terminal events for a length stop.

When a streamed reservation cannot grow (StateStore.extend refused), the relay stops
reading the upstream and sends the client what a provider sends when the output hit
`max_tokens`, so SDKs and agents see an ordinary, complete, truncated answer:

- OpenAI chat: per choice still open a chunk with `finish_reason: "length"`, the usage
  chunk (`choices: []`) when the client asked for `stream_options.include_usage`, then
  `data: [DONE]`;
- OpenAI Responses: for each output item still open, the `…done` events the SDKs expect
  (`output_text.done`, `refusal.done`, `content_part.done`, `function_call_arguments.done`,
  `custom_tool_call_input.done`, reasoning `…done`s) with the full text so far, then
  `response.output_item.done` (status `incomplete`), then `response.incomplete` with
  `incomplete_details.reason: "max_output_tokens"`, the whole output and the usage;
  sequence numbers continue the stream's;
- Anthropic Messages: `content_block_stop` for a block still open, `message_delta` with
  `stop_reason: "max_tokens"` and the usage, `message_stop`.

What already ended is not ended again: a choice that finished keeps its finish_reason,
a sent usage chunk or message_delta is not repeated, and a stream whose own ending went
out gets nothing more.

A `StreamCut` learns what the client was sent from the events themselves: a StreamTap
built with `cut=` hands it every event it forwards (tap.cut_stream() adds the catch-up
of the events it deferred), and such a tap forwards whole events only, so a cut always
falls between two events. If nothing was sent yet, the ending starts the stream too
(a role chunk, `response.created`, `message_start`). Pure: time is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from tallygate.types import Usage

LENGTH = "length"


class StreamCut(Protocol):
    def observe(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        """One event the client was sent (`kind`: the SSE event name, if any)."""
        ...

    def ending(self, usage: Usage, *, now: float) -> bytes:
        """The bytes that end the stream as a length stop, with `usage` as its figures."""
        ...


def cut_for(protocol: str, route: str, *, model: str, include_usage: bool = True,
            choices: int = 1, cut_id: str = "tallygate-cut") -> StreamCut:
    """The cut of a streaming route. `include_usage`: the client asked for the chat usage
    chunk; `choices`: the request's n; `cut_id` names what is made up when the stream
    had not started (the response or message id)."""
    if protocol == "anthropic":
        return MessagesCut(model=model, cut_id=cut_id)
    if route.strip("/").removeprefix("v1/") == "responses":  # (common.normalise_route)
        return ResponsesCut(model=model, cut_id=cut_id)
    return ChatCut(model=model, include_usage=include_usage, choices=choices, cut_id=cut_id)


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(kind: str, obj: Any) -> bytes:
    return f"event: {kind}\ndata: ".encode() + orjson.dumps(obj) + b"\n\n"


# --------------------------------------------------------------------------- chat


class ChatCut:
    """Chat completions: remembers the first chunk's envelope and which choices ended."""

    def __init__(self, *, model: str, include_usage: bool, choices: int = 1,
                 cut_id: str = "tallygate-cut") -> None:
        self.model = model
        self.include_usage = include_usage
        self.choices = max(1, choices)
        self.cut_id = cut_id
        self.head: dict[str, Any] | None = None
        self.seen: set[int] = set()
        self.finished: set[int] = set()
        self.usage_sent = False

    def observe(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        del kind
        if self.head is None and "id" in obj:
            self.head = {k: obj[k] for k in ("id", "object", "created", "model",
                                             "system_fingerprint", "service_tier")
                         if k in obj}
        if obj.get("choices") == [] and obj.get("usage"):
            self.usage_sent = True
        for choice in obj.get("choices") or ():
            if isinstance(choice, Mapping) and isinstance(choice.get("index"), int):
                self.seen.add(choice["index"])
                if choice.get("finish_reason"):
                    self.finished.add(choice["index"])

    def ending(self, usage: Usage, *, now: float) -> bytes:
        out = bytearray()
        head = self.head
        if head is None:  # nothing was sent: open the stream first
            head = {"id": f"chatcmpl-{self.cut_id}", "object": "chat.completion.chunk",
                    "created": int(now), "model": self.model}
            out += self._chunk(head, [{"index": i, "delta": {"role": "assistant",
                                                             "content": ""},
                                       "logprobs": None, "finish_reason": None}
                                      for i in range(self.choices)])
        open_ = sorted((self.seen | set(range(self.choices))) - self.finished)
        for index in open_:
            out += self._chunk(head, [{"index": index, "delta": {}, "logprobs": None,
                                       "finish_reason": LENGTH}])
        if self.include_usage and not self.usage_sent:
            out += _data({**head, "choices": [], "usage": _chat_usage(usage)})
        out += b"data: [DONE]\n\n"
        return bytes(out)

    def _chunk(self, head: Mapping[str, Any], choices: list[dict[str, Any]]) -> bytes:
        obj: dict[str, Any] = {**head, "choices": choices}
        if self.include_usage:
            obj["usage"] = None  # (every chunk but the last carries a null usage)
        return _data(obj)


def _chat_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


# --------------------------------------------------------------------------- responses


_PART_TEXT = {"output_text": "text", "refusal": "refusal", "reasoning_text": "text",
              "summary_text": "text"}
# delta event → (which list of the item its parts live in, the part type)
_DELTAS = {
    "response.output_text.delta": ("content", "output_text"),
    "response.refusal.delta": ("content", "refusal"),
    "response.reasoning_text.delta": ("content", "reasoning_text"),
    "response.reasoning_summary_text.delta": ("summary", "summary_text"),
}
_ITEM_TEXT = {"function_call": ("arguments", "response.function_call_arguments"),
              "custom_tool_call": ("input", "response.custom_tool_call_input")}
_HAS_STATUS = frozenset({"message", "function_call", "reasoning"})
_ITEM_DELTAS = frozenset({"response.function_call_arguments.delta",
                          "response.custom_tool_call_input.delta"})
# part event → (the item's list it belongs to, whether the part is finished)
_PART_EVENTS = {
    "response.content_part.added": ("content", False),
    "response.content_part.done": ("content", True),
    "response.reasoning_summary_part.added": ("summary", False),
    "response.reasoning_summary_part.done": ("summary", True),
}


class _Item:
    __slots__ = ("done", "item", "parts", "text")

    def __init__(self, item: Mapping[str, Any]) -> None:
        self.item = dict(item)
        self.done: dict[str, Any] | None = None  # the item of its output_item.done
        self.text: list[str] = []  # function arguments / custom tool input so far
        # (list name, index) → [part, text pieces, done]
        self.parts: dict[tuple[str, int], list[Any]] = {}


class ResponsesCut:
    """Responses: remembers the response, each output item, its parts and their text."""

    def __init__(self, *, model: str, cut_id: str = "tallygate-cut") -> None:
        self.model = model
        self.cut_id = cut_id
        self.response: dict[str, Any] | None = None
        self.items: dict[int, _Item] = {}
        self.sequence = -1

    def observe(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        kind = obj.get("type") or kind
        seq = obj.get("sequence_number")
        if isinstance(seq, int):
            self.sequence = max(self.sequence, seq)
        if kind in ("response.created", "response.in_progress", "response.queued"):
            if isinstance(obj.get("response"), Mapping):
                self.response = dict(obj["response"])
            return
        at = obj.get("output_index")
        if not isinstance(at, int):
            return
        if kind == "response.output_item.added" and isinstance(obj.get("item"), Mapping):
            self.items[at] = _Item(obj["item"])
            return
        found = self.items.get(at)
        if found is not None:
            self._on_item(found, str(kind), obj)

    def _on_item(self, found: _Item, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "response.output_item.done" and isinstance(obj.get("item"), Mapping):
            found.done = dict(obj["item"])
        elif kind in _PART_EVENTS:
            where, done = _PART_EVENTS[kind]
            index = obj.get("content_index" if where == "content" else "summary_index")
            if isinstance(index, int) and isinstance(obj.get("part"), Mapping):
                found.parts[(where, index)] = [dict(obj["part"]), [], done]
        elif kind in _DELTAS:
            self._delta(found, kind, obj)
        elif kind in _ITEM_DELTAS and isinstance(obj.get("delta"), str):
            found.text.append(obj["delta"])

    def _delta(self, found: _Item, kind: str, obj: Mapping[str, Any]) -> None:
        where, part_type = _DELTAS[kind]
        index = obj.get("summary_index" if where == "summary" else "content_index")
        if not isinstance(index, int) or not isinstance(obj.get("delta"), str):
            return
        part = found.parts.get((where, index))
        if part is None:  # reasoning text arrives without a part.added
            part = found.parts[(where, index)] = [{"type": part_type}, [], False]
        part[1].append(obj["delta"])

    # -- the ending ---------------------------------------------------------------------
    def ending(self, usage: Usage, *, now: float) -> bytes:
        out = bytearray()
        response = self.response
        if response is None:  # nothing was sent: open the stream first
            response = self._new_response(now)
            out += self._emit("response.created", response={**response, "output": []})
        output: list[dict[str, Any]] = []
        for at in sorted(self.items):
            found = self.items[at]
            if found.done is None:
                out += self._close_item(at, found)
            assert found.done is not None
            output.append(found.done)
        final = {**response, "status": "incomplete",
                 "incomplete_details": {"reason": "max_output_tokens"}, "output": output,
                 "usage": _responses_usage(usage)}
        out += self._emit("response.incomplete", response=final)
        return bytes(out)

    def _emit(self, kind: str, **fields: Any) -> bytes:
        self.sequence += 1
        return _event(kind, {"type": kind, "sequence_number": self.sequence, **fields})

    def _close_item(self, at: int, found: _Item) -> bytes:
        out = bytearray()
        item = dict(found.item)
        item_id = item.get("id", "")
        where = {"item_id": item_id, "output_index": at}
        lists: dict[str, list[dict[str, Any]]] = {"content": [], "summary": []}
        for (name, index), (known, pieces, done) in sorted(found.parts.items()):
            part = dict(known)
            field = _PART_TEXT.get(str(part.get("type")))
            if not done and field is not None:
                part[field] = part.get(field, "") + "".join(pieces)
                out += self._part_events(name, index, part, field, where)
            lists[name].append(part)
        kind = item.get("type")
        if kind == "message" or found.parts:
            for name, parts in lists.items():
                if parts or name in item:
                    item[name] = parts
        if kind in _ITEM_TEXT:
            field, event = _ITEM_TEXT[kind]
            item[field] = item.get(field, "") + "".join(found.text)
            extra = {"name": item.get("name", "")} if kind == "function_call" else {}
            out += self._emit(f"{event}.done", **where, **extra, **{field: item[field]})
        if kind in _HAS_STATUS:
            item["status"] = "incomplete"
        found.done = item
        out += self._emit("response.output_item.done", output_index=at, item=item)
        return bytes(out)

    def _part_events(self, name: str, index: int, part: dict[str, Any], field: str,
                     where: dict[str, Any]) -> bytes:
        kind = part.get("type")
        if name == "summary":
            at = {**where, "summary_index": index}
            return (self._emit("response.reasoning_summary_text.done", **at,
                               text=part[field])
                    + self._emit("response.reasoning_summary_part.done", **at, part=part))
        at = {**where, "content_index": index}
        if kind == "reasoning_text":
            return self._emit("response.reasoning_text.done", **at, text=part[field])
        if kind == "refusal":
            done = self._emit("response.refusal.done", **at, refusal=part[field])
        else:
            part.setdefault("annotations", [])
            part.setdefault("logprobs", [])
            done = self._emit("response.output_text.done", **at, text=part[field],
                              logprobs=part["logprobs"])
        return done + self._emit("response.content_part.done", **at, part=part)

    def _new_response(self, now: float) -> dict[str, Any]:
        return {
            "id": f"resp_{self.cut_id}", "object": "response", "created_at": int(now),
            "status": "in_progress", "error": None, "incomplete_details": None,
            "instructions": None, "model": self.model, "output": [], "tools": [],
            "tool_choice": "auto", "parallel_tool_calls": True, "metadata": {},
            "temperature": None, "top_p": None,
        }


def _responses_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                 "cache_write_tokens": usage.cache_write_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


# --------------------------------------------------------------------------- anthropic


class MessagesCut:
    """Anthropic Messages: remembers whether the message started and which block is open."""

    def __init__(self, *, model: str, cut_id: str = "tallygate-cut") -> None:
        self.model = model
        self.cut_id = cut_id
        self.started = False
        self.stopped = False  # a message_delta with its stop_reason went out
        self.open: set[int] = set()
        self.next_index = 0

    def observe(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        kind = obj.get("type") or kind
        if kind == "message_start":
            self.started = True
        elif kind == "message_delta":
            delta = obj.get("delta")
            self.stopped = isinstance(delta, Mapping) and bool(delta.get("stop_reason"))
        index = obj.get("index")
        if not isinstance(index, int):
            return
        if kind == "content_block_start":
            self.open.add(index)
            self.next_index = max(self.next_index, index + 1)
        elif kind == "content_block_stop":
            self.open.discard(index)

    def ending(self, usage: Usage, *, now: float) -> bytes:
        del now
        out = bytearray()
        if not self.started:  # nothing was sent: open the stream first
            out += _event("message_start", {"type": "message_start", "message": {
                "id": f"msg_{self.cut_id}", "type": "message", "role": "assistant",
                "content": [], "model": self.model, "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": max(0, usage.input_tokens - usage.cached_tokens
                                              - usage.cache_write_tokens),
                          "output_tokens": 0}}})
        for index in sorted(self.open):
            out += _event("content_block_stop", {"type": "content_block_stop", "index": index})
        self.open.clear()
        if self.stopped:  # only the message_stop was missing
            return bytes(out) + _event("message_stop", {"type": "message_stop"})
        out += _event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": usage.output_tokens}})
        out += _event("message_stop", {"type": "message_stop"})
        return bytes(out)
