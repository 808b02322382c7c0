"""on_exceed: summarize in the gateway: the oldest turns are summarised by the
feature's `summarize_model` (else its model) through the same upstream, as a call of
its own — own reservation, settle and ledger row (feature `<feature>:summarize`). The
summary is cached by the SHA-256 of the turns it replaces (in the response cache when
configured, else in process memory) so a conversation is not re-summarised every turn."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from tallygate.cache import ResponseCache, turns_key
from tallygate.config import Policy
from tallygate.core import decide as verdict
from tallygate.engine import SUMMARIZE_SUFFIX, Admission, Engine
from tallygate.errors import UpstreamError
from tallygate.gateway.resilience import UpstreamCaller, wire_of

INSTRUCTION = (
    "Summarise the following conversation turns in a few sentences. Keep names, numbers, "
    "decisions and open questions. Answer with the summary only."
)
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


def _reply_text(protocol: str, answer: Any) -> str:
    if not isinstance(answer, dict):
        return ""
    if protocol == "anthropic":
        blocks = answer.get("content") or []
        return "".join(b.get("text", "") for b in blocks if isinstance(b, dict))
    choices = answer.get("choices") or [{}]
    message = choices[0].get("message") or {} if isinstance(choices[0], dict) else {}
    content = message.get("content")
    return content if isinstance(content, str) else ""


class GatewaySummarizer:
    def __init__(self, policy: Policy, engine: Engine, caller: UpstreamCaller,
                 cache: ResponseCache | None) -> None:
        self.policy = policy
        self.engine = engine
        self.caller = caller
        self.cache = cache
        self._memory: OrderedDict[str, str] = OrderedDict()
        self.calls = 0  # upstream summary calls made (tests check the cache works)

    def model_for(self, adm: Admission) -> str:
        feature = self.policy.feature(adm.ctx.feature)
        name = feature.summarize_model or feature.model or adm.model.name
        return verdict.resolve_model(name, feature=None, step=None, policy=self.policy)

    async def summarize(self, adm: Admission, turns: Sequence[Any], max_tokens: int) -> str:
        model = self.model_for(adm)
        key = turns_key(model, list(turns))
        found = await self._cached(key)
        if found is not None:
            adm.detail["summary_cache"] = "hit"
            return found
        text = await self._call(adm, model, turns, max_tokens)
        await self._remember(key, text)
        return text

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

    def _request(self, protocol: str, model: str, turns: Sequence[Any],
                 max_tokens: int) -> dict[str, Any]:
        text = transcript(turns)
        if protocol == "anthropic":
            return {"model": model, "system": INSTRUCTION, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": text}]}
        return {"model": model, "max_tokens": max_tokens,
                "messages": [{"role": "system", "content": INSTRUCTION},
                             {"role": "user", "content": text}]}

    async def _call(self, adm: Admission, model: str, turns: Sequence[Any],
                    max_tokens: int) -> str:
        """A separately admitted, settled and recorded upstream call."""
        protocol = adm.ctx.protocol
        route = "messages" if protocol == "anthropic" else "chat/completions"
        ctx = dataclasses.replace(
            adm.ctx, route=route, feature=adm.feature + SUMMARIZE_SUFFIX, stream=False,
            request_id=adm.ctx.request_id + SUMMARIZE_SUFFIX)
        self.calls += 1
        async with self.engine.hold(ctx, self._request(protocol, model, turns, max_tokens)) as sub:
            result = await self.caller.send(protocol, route, sub, {}, stream=False)
            wire = wire_of(protocol)
            if not result.ok:
                await self.engine.fail(sub, status=result.status, retries=result.retries,
                                       error_code=result.fault.code if result.fault and
                                       result.fault.code else "upstream")
                raise UpstreamError("The summary call failed.", status=result.status)
            answer = orjson.loads(result.body)
            usage = wire.usage_from_body(route, answer)
            await self.engine.complete(sub, usage or sub_usage(sub), retries=result.retries,
                                       exact=usage is not None)
        text = _reply_text(protocol, answer).strip()
        if not text:
            raise UpstreamError("The summary call returned no text.", status=502)
        return text


def sub_usage(adm: Admission) -> Any:
    from tallygate.types import Usage

    return Usage(adm.count.tokens, adm.max_output or 0)
