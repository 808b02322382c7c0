"""Every way a call can end leaves no hold behind and exactly one row: failures injected
at each step of a call's life, cancellations (once and twice), open streams at shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tallygate.engine import Answer
from tallygate.errors import StoreUnavailable
from tallygate.state.memory import MemoryStore
from tallygate.types import Outcome
from tests.engine.conftest import Rig, body

CHUNKS = [
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":"one two three"}}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":" four five six"}}]}\n\n',
]
USAGE_CHUNK = (b'data: {"id":"c","object":"chat.completion.chunk","choices":[],'
               b'"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}\n\n')


def stream_answer() -> Answer:
    return Answer(200, stream=object())  # the engine never reads it: the front door does


async def test_a_port_that_raises_leaves_no_hold_and_one_row(rig: Rig) -> None:
    rig.port.script = [RuntimeError("bug in a port")]
    with pytest.raises(RuntimeError):
        await rig.engine.run(rig.ctx(), body(), rig.port)
    [row] = rig.rows
    assert (row.status, row.error_code, row.outcome) == (500, "internal_error", Outcome.ERROR)
    assert await rig.nothing_held()


async def test_a_cancelled_call_is_recorded_as_499(rig: Rig) -> None:
    started = asyncio.Event()

    async def forever(call: Any) -> Answer:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError

    class Hanging:
        async def send(self, call: Any, *, timeout: float) -> Answer:
            return await forever(call)

        def provider_timeout(self, call: Any) -> float:
            return 30.0

    task = asyncio.ensure_future(rig.engine.run(rig.ctx(), body(), Hanging()))
    await started.wait()
    assert (await rig.used())[1] > 0  # held while the upstream thinks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = rig.rows
    assert (row.status, row.error_code) == (499, "client_disconnected")
    assert await rig.nothing_held()


async def test_a_second_cancel_during_the_closing_still_closes(rig: Rig) -> None:
    """Ctrl-C twice: the closing is shielded, runs to its end, and drain() waits for it."""
    gate = asyncio.Event()
    slow = SlowFinish(gate)
    rig.engine.store = slow
    rig.store = slow
    hung = asyncio.Event()

    class Hanging:
        async def send(self, call: Any, *, timeout: float) -> Answer:
            hung.set()
            await asyncio.Event().wait()
            raise AssertionError

        def provider_timeout(self, call: Any) -> float:
            return 30.0

    task = asyncio.ensure_future(rig.engine.run(rig.ctx(), body(), Hanging()))
    await hung.wait()
    task.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()  # again, while the closing waits on the store
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not rig.rows  # still closing
    gate.set()
    await rig.engine.drain()
    [row] = rig.rows
    assert row.status == 499
    assert await rig.nothing_held()


class SlowFinish(MemoryStore):
    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def finish_and_read(self, *args: Any, **kwargs: Any) -> Any:
        await self.gate.wait()
        return await super().finish_and_read(*args, **kwargs)


class FailingFinish(MemoryStore):
    async def finish_and_read(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the store went away")


async def test_a_store_failing_at_settle_still_writes_the_row(rig: Rig) -> None:
    store = FailingFinish()
    rig.engine.store = store
    _, answer = await rig.engine.run(rig.ctx(), body(), rig.port)
    assert answer.ok  # the client still gets the provider's answer
    [row] = rig.rows
    assert row.outcome is Outcome.OK and row.input_tokens == 10
    assert "settlement failed" in (row.detail or "")


async def test_a_store_failing_at_reserve_is_a_recorded_refusal(rig: Rig) -> None:
    class Down(MemoryStore):
        async def reserve(self, *args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("down")

    rig.engine.store = Down()
    with pytest.raises(StoreUnavailable):
        await rig.engine.run(rig.ctx(), body(), rig.port)
    [row] = rig.rows
    assert (row.status, row.error_code) == (429, "store_unavailable")
    assert not rig.port.sent


async def test_a_stream_ended_normally_settles_the_providers_usage(rig: Rig) -> None:
    rig.port.then = stream_answer()
    call, answer = await rig.engine.start(rig.ctx(stream=True), body(stream=True), rig.port)
    assert not call.closed and answer.stream is not None
    tap = call.meter()
    for chunk in [*CHUNKS, USAGE_CHUNK, b"data: [DONE]\n\n"]:
        tap.feed(chunk)
    await rig.engine.finish_stream(call, ended=True)
    [row] = rig.rows
    assert (row.input_tokens, row.output_tokens, row.exact) == (9, 6, True)
    assert await rig.used() == (15, 0)


async def test_a_stream_cut_by_the_client_settles_what_was_relayed(rig: Rig) -> None:
    rig.port.then = stream_answer()
    call, _ = await rig.engine.start(rig.ctx(stream=True), body(stream=True), rig.port)
    for chunk in CHUNKS:
        call.meter().feed(chunk)
    await rig.engine.finish_stream(call, ended=False, disconnected=True)
    [row] = rig.rows
    assert row.status == 499 and row.output_tokens >= 6  # the relayed text, counted
    used, reserved = await rig.used()
    assert reserved == 0 and used == row.input_tokens + row.output_tokens


async def test_streams_open_at_shutdown_are_closed_with_their_relayed_tokens(rig: Rig) -> None:
    rig.port.then = stream_answer()
    call, _ = await rig.engine.start(rig.ctx(stream=True), body(stream=True), rig.port)
    for chunk in CHUNKS:
        call.meter().feed(chunk)
    assert await rig.engine.close_open_calls() == 1
    [row] = rig.rows
    assert (row.status, row.error_code) == (499, "shutdown") and row.output_tokens >= 6
    assert await rig.nothing_held()
    assert await rig.engine.close_open_calls() == 0  # closed once


async def test_a_call_is_closed_exactly_once(rig: Rig) -> None:
    rig.port.then = stream_answer()
    call, _ = await rig.engine.start(rig.ctx(stream=True), body(stream=True), rig.port)
    await rig.engine.finish_stream(call, ended=False, disconnected=True)
    await rig.engine.finish_stream(call, ended=True)
    await rig.engine.abandon(call)
    assert len(rig.rows) == 1
