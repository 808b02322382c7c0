"""The engine in process: Engine + MemoryStore + MemoryRecorder + a fake clock and a
scripted port. No sockets, no threads, no sleeps: the whole suite runs in seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tallygate.config import Policy
from tallygate.core.catalog import Catalog
from tallygate.engine import (
    Answer,
    Call,
    CallContext,
    Engine,
    MemoryRecorder,
    RetrySettings,
    new_call_id,
)
from tallygate.errors import UpstreamError
from tallygate.providers.common import UpstreamFault
from tallygate.state.memory import MemoryStore
from tallygate.types import CallRecord, Window

NOW = 1_800_000_000.0
HI = [{"role": "user", "content": "Hello there"}]
BASE_POLICY: dict[str, Any] = {
    "features": {
        "chat": {"max_output": 50, "model": "gpt-4o-mini"},
        "strict": {"max_input": 40, "max_output": 20, "model": "gpt-4o-mini"},
        "trimmed": {"max_input": 40, "max_output": 20, "model": "gpt-4o-mini",
                    "on_exceed": "trim"},
        "summed": {"max_input": 60, "max_output": 20, "model": "gpt-4o-mini",
                   "on_exceed": "summarize"},
        "backup": {"max_output": 20, "model": "gpt-4o-mini", "fallbacks": ["gpt-4o"],
                   "on_limit": "fallback"},
        "default": {"max_output": 30},
    },
    "plans": {"free": {"tokens_per_day": 300}, "pro": {"tokens_per_day": 100_000}},
}


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reply(prompt: int = 10, completion: int = 5, text: str = "Hi!", **usage: int) -> Answer:
    """A chat completion answer as the upstream would send it."""
    body = {"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion, **usage}}
    return Answer(200, orjson.dumps(body), {})


def fault(status: int, *, code: str | None = None, retry_after: float | None = None,
          context_length: bool = False, retryable: bool | None = None) -> Answer:
    retry = status in (429, 500, 502, 503) if retryable is None else retryable
    body = orjson.dumps({"error": {"message": "nope", "type": "x", "code": code}})
    return Answer(status, body, {}, fault=UpstreamFault(
        status=status, retryable=retry, context_length=context_length,
        retry_after=retry_after, retry_at=None, type="x", code=code, message="nope"))


def timeout() -> Answer:
    from tallygate.engine import transport_fault

    err = UpstreamError("timed out", status=504, timeout=True)
    return Answer(504, error=err, fault=transport_fault(err))


Script = Callable[[Call], Answer] | Answer | BaseException


@dataclass
class FakePort:
    """Answers each try from `script` (an Answer, an exception to raise, or a function of
    the call); when the script is used up, every try gets `then`."""

    script: list[Script] = field(default_factory=list)
    then: Script | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)  # model, max_output, body

    async def send(self, call: Call, *, timeout: float) -> Answer:
        del timeout
        self.sent.append({"model": call.model.name, "max_output": call.max_output,
                          "body": call.body, "feature": call.feature})
        step = self.script.pop(0) if self.script else self.then or reply()
        if isinstance(step, BaseException):
            raise step
        answer = step(call) if callable(step) else step
        return Answer(answer.status, answer.body, answer.headers, answer.stream,
                      answer.payload, answer.usage, answer.fault, answer.error)

    def provider_timeout(self, call: Call) -> float:
        del call
        return 30.0


@dataclass
class Rig:
    engine: Engine
    store: MemoryStore
    recorder: MemoryRecorder
    clock: Clock
    port: FakePort

    @property
    def rows(self) -> list[CallRecord]:
        return self.recorder.rows

    def ctx(self, feature: str | None = "chat", **kw: Any) -> CallContext:
        base: dict[str, Any] = {"user": "u1", "plan": "free", "key_id": "k1"}
        base.update(kw)
        return CallContext("openai", base.pop("route", "chat/completions"), new_call_id(),
                           feature=feature, **base)

    async def used(self, user: str = "u1", limit: int = 300) -> tuple[int, int]:
        """(used, reserved) of the user's day."""
        got = await self.store.usage(f"user:{user}:tokens:day", limit=limit,
                                     window=Window.DAY, now=self.clock.now)
        return got.used, got.reserved

    async def nothing_held(self, users: Iterable[str] = ("u1",)) -> bool:
        for user in users:
            _, reserved = await self.used(user)
            if reserved:
                return False
        return True


def body(messages: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": messages or HI, **kw}


def growing_turns(n: int, opening: str = "You are a careful reviewer.") -> list[dict[str, str]]:
    """A system turn, then `n` user turns, each four times longer than the one before: a
    conversation whose context keeps growing (the runaway guard's growth rule)."""
    turns = [{"role": "system", "content": opening}]
    turns += [{"role": "user", "content": "more context " * (10 * 4 ** i)} for i in range(n)]
    return turns


@pytest.fixture
def make_rig() -> Callable[..., Rig]:
    def make(**sections: Any) -> Rig:
        policy = Policy.from_mapping({**BASE_POLICY, **sections}, env={})
        store = MemoryStore()
        recorder = MemoryRecorder()
        clock = Clock()
        engine = Engine(policy, Catalog(policy.models), store, recorder, clock=clock,
                        retry=RetrySettings(base_delay=0.0, max_delay=0.0, sleep=_no_sleep))
        return Rig(engine, store, recorder, clock, FakePort())

    return make


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


async def _no_sleep(seconds: float) -> None:
    del seconds
