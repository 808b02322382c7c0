"""on_exceed: summarize. The oldest turns are summarised by the feature's
`summarize_model` (else its model) as a call of its own, through the parent call's port
— its own reservation, settlement and ledger row (feature `<feature>:summarize`, the
parent's id in its detail). The summary is cached by the SHA-256 of the turns it
replaces (in the response cache when one is configured, else in process memory), so a
conversation is not re-summarised every turn."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from tallygate.cache import ResponseCache, turns_key
from tallygate.core import decide
from tallygate.engine.ids import new_call_id
from tallygate.errors import UpstreamError

if TYPE_CHECKING:
    from tallygate.engine.call import Call
    from tallygate.engine.owner import CallOwner
    from tallygate.engine.ports import Port

INSTRUCTION = (
    "Summarise the following conversation turns in a few sentences. Keep names, numbers, "
    "decisions and open questions. Answer with the summary only."
)
SUFFIX = ":summarize"
SUMMARY_TTL = 7 * 86400.0
MEMORY_ENTRIES = 1024


def transcript(turns: Sequence[Any]) -> str:
    """The turns as plain `role: text` lines (non-text parts as compact JSON)."""
    lines = []
    for turn in turns:
        if not isinstance(turn, dict):
            continue
        content = turn.get("content")
        if isinstance(content, list):
            parts = [p.get("text") if isinstance(p, dict) and isinstance(p.get("text"), str)
                     else orjson.dumps(p).decode() for p in content]
            content = " ".join(parts)
        elif not isinstance(content, str):
            content = orjson.dumps(content).decode() if content is not None else ""
        extra = turn.get("tool_calls")
        if extra:
            content += " " + orjson.dumps(extra).decode()
        lines.append(f"{turn.get('role', 'user')}: {content}")
    return "\n".join(lines)


class Summarizer:
    def __init__(self, cache: ResponseCache | None) -> None:
        self.cache = cache
        self._memory: OrderedDict[str, str] = OrderedDict()
        self.calls = 0  # upstream summary calls made (tests check the cache works)

    async def summarize(self, engine: CallOwner, call: Call, turns: Sequence[Any],
                        max_tokens: int, port: Port) -> str:
        """The summary text; TallygateError when it cannot be made."""
        model = self._model_for(engine, call)
        key = turns_key(model, list(turns))
        found = await self._cached(key)
        if found is not None:
            call.notes.summary_cache = True
            return found
        text = await self._call(engine, call, model, turns, max_tokens, port)
        await self._remember(key, text)
        return text

    def _model_for(self, engine: CallOwner, call: Call) -> str:
        feature = call.policy.feature(call.ctx.feature)
        name = feature.summarize_model or feature.model or call.model.name
        return decide.resolve_model(name, feature=None, step=None, policy=call.policy)

    async def _cached(self, key: str) -> str | None:
        if self.cache is not None:
            return await self.cache.get(key)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        return None

    async def _remember(self, key: str, text: str) -> None:
        if self.cache is not None:
            await self.cache.put(key, text, SUMMARY_TTL)
            return
        self._memory[key] = text
        while len(self._memory) > MEMORY_ENTRIES:
            self._memory.popitem(last=False)

    async def _call(self, engine: CallOwner, call: Call, model: str, turns: Sequence[Any],
                    max_tokens: int, port: Port) -> str:
        """A separately admitted, settled and recorded call through the parent's port."""
        route, body = call.adapter.summary_request(model, INSTRUCTION, transcript(turns),
                                                   max_tokens)
        ctx = dataclasses.replace(
            call.ctx, route=route, feature=call.feature + SUFFIX, stream=False,
            call_id=new_call_id(), client_request_id=None, parent=call.id)
        self.calls += 1
        sub, answer = await engine.run(ctx, body, port)
        if not answer.ok:
            raise UpstreamError("The summary call failed.", status=answer.status)
        text = sub.adapter.reply_text(route, _parsed(answer)).strip()
        if not text:
            raise UpstreamError("The summary call returned no text.", status=502)
        return text


def _parsed(answer: Any) -> Any:
    if answer.payload is not None:
        dump = getattr(answer.payload, "model_dump", None)
        return dump(mode="json") if callable(dump) else answer.payload
    try:
        return orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return None
