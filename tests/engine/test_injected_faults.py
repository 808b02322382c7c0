"""Failures that are not the store going away, injected after admission: the store's
`extend` raising while a streamed hold grows, the recorder raising, settle raising a
programming error. Each call still ends, leaves nothing held and has its row (or, when
the recorder itself is what broke, the failure is logged under the call's id)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tallygate.engine import Answer, MemoryRecorder
from tallygate.errors import BudgetExceeded
from tallygate.runtime import FanOut
from tallygate.state.memory import MemoryStore
from tallygate.types import CallRecord, Outcome
from tests.engine.conftest import Rig, body

SLICED = {"sliced": {"max_output": 400, "model": "gpt-4o-mini", "stream_slice": 16}}


def chunk(text: str) -> bytes:
    return (b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
            b'"delta":{"content":"' + text.encode() + b'"}}]}\n\n')


class ExtendBreaks(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.extends = 0

    async def extend(self, *args: Any, **kwargs: Any) -> Any:
        self.extends += 1
        raise RuntimeError("a bug in extend")


class FinishBreaks(MemoryStore):
    async def finish_and_read(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in settle")


class BrokenRecorder:
    def record(self, row: CallRecord) -> None:
        raise RuntimeError("a bug in a recorder")


async def test_extend_raising_ends_the_stream_with_what_was_relayed(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig: Rig = make_rig(features=SLICED)
    store = ExtendBreaks()
    rig.engine.store = rig.store = store
    rig.port.then = Answer(200, stream=object())
    call, _ = await rig.engine.start(rig.ctx("sliced", stream=True, can_cut=True),
                                     body(stream=True), rig.port)
    assert call.streamed  # a streamed reservation: it grows through extend
    tap = call.meter()
    grew = True
    async with rig.engine.owning(call):  # as the gateway's relay runs a stream
        for _ in range(40):
            tap.feed(chunk("one two three four"))
            grew = await rig.engine.keep_up(call)
            if not grew:  # the front door cuts the stream here, as for a refusal
                break
        await rig.engine.finish_stream(call, ended=False, cut=True)
    assert not grew and store.extends == 1
    [row] = rig.rows
    assert row.outcome is not Outcome.ERROR and "internal_error" in (row.detail or "")
    assert row.output_tokens >= 8  # the relayed text (the hold, less its margin), counted
    used, reserved = await rig.used()
    assert reserved == 0 and used == row.input_tokens + row.output_tokens


async def test_a_broken_first_recorder_does_not_cost_the_next_one_the_row(rig: Rig) -> None:
    kept = MemoryRecorder()
    rig.engine.recorder = FanOut(BrokenRecorder(), kept)
    call, answer = await rig.engine.run(rig.ctx(), body(), rig.port)
    assert answer.ok and [row.request_id for row in kept.rows] == [call.id]


async def test_settle_raising_a_bug_still_writes_the_row_and_holds_nothing(rig: Rig) -> None:
    rig.engine.store = rig.store = FinishBreaks()
    _, answer = await rig.engine.run(rig.ctx(), body(), rig.port)
    assert answer.ok  # the provider answered: the client gets it
    [row] = rig.rows
    assert row.outcome is Outcome.OK and (row.input_tokens, row.output_tokens) == (10, 5)
    assert "settlement failed" in (row.detail or "")
    assert await rig.nothing_held()


async def test_settle_raising_a_bug_on_a_stream_still_records_it(rig: Rig) -> None:
    rig.engine.store = rig.store = FinishBreaks()
    rig.port.then = Answer(200, stream=object())
    call, _ = await rig.engine.start(rig.ctx(stream=True), body(stream=True), rig.port)
    call.meter().feed(chunk("one two three"))
    await rig.engine.finish_stream(call, ended=False, disconnected=True)
    [row] = rig.rows
    assert row.status == 499 and row.output_tokens >= 3
    assert await rig.nothing_held()


async def test_a_recorder_raising_costs_neither_the_answer_nor_the_other_recorders(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    kept = MemoryRecorder()
    rig.engine.recorder = FanOut(kept, BrokenRecorder())
    with caplog.at_level(logging.ERROR, logger="tallygate"):
        call, answer = await rig.engine.run(rig.ctx(), body(), rig.port)
    assert answer.ok
    [row] = kept.rows
    assert row.request_id == call.id and row.outcome is Outcome.OK
    assert await rig.used() == (15, 0)  # settled to the provider's usage
    assert any(call.id in r.getMessage() and "recorder" in r.getMessage()
               for r in caplog.records)


async def test_a_recorder_raising_leaves_a_refusal_a_refusal(rig: Rig) -> None:
    rig.engine.recorder = BrokenRecorder()
    rig.port.then = None
    big = body([{"role": "user", "content": "word " * 400}])
    with pytest.raises(BudgetExceeded):
        await rig.engine.run(rig.ctx(), big, rig.port)
    assert not rig.port.sent and await rig.nothing_held()
