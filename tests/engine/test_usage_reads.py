"""The x-ratelimit-* usage reads ride along with reserve/settle; when a two-step store
(state/read_along.py, as Redis) fails them, the call is still settled and recorded
(only the headers are lost)."""

from __future__ import annotations

from typing import Any

from tallygate.config import Policy
from tallygate.core.catalog import Catalog
from tallygate.engine import CallContext, Engine, MemoryRecorder, new_call_id
from tallygate.errors import StoreUnavailable
from tallygate.state.memory import MemoryStore
from tallygate.state.read_along import ReadAlong
from tallygate.types import Outcome, Usage

POLICY = Policy.from_mapping({
    "features": {"chat": {"max_output": 50, "model": "gpt-4o-mini"}},
    "plans": {"free": {"tokens_per_day": 10_000}},
}, env={})


class FlakyReads(ReadAlong, MemoryStore):
    """A two-step store whose usage() reads fail, as during a brief outage."""

    async def usage(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("usage read failed")


async def test_failed_usage_reads_do_not_lose_the_settlement() -> None:
    store = FlakyReads()
    recorder = MemoryRecorder()
    engine = Engine(POLICY, Catalog(), store, recorder, clock=lambda: 1_800_000_000.0)
    ctx = CallContext(protocol="openai", route="chat/completions", call_id=new_call_id(),
                      feature="chat", user="u", plan="free", stream=True)
    call = await engine.admit(ctx, {"model": "gpt-4o-mini",
                                   "messages": [{"role": "user", "content": "hi"}]})
    assert call.limit_usage == []  # the read failed: no headers, but the call goes on
    await engine.complete(call, Usage(input_tokens=8, output_tokens=5))
    [row] = recorder.rows
    assert row.outcome is Outcome.OK and row.output_tokens == 5
    day = await MemoryStore.usage(store, "user:u:tokens:day", limit=10_000,
                                  window=call.holds[0].window, now=1_800_000_000.0)
    assert day.reserved == 0 and day.used == 13
    assert await engine.limit_usage(call) == []
