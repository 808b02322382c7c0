"""TracingRecorder with the in-memory span exporter: GenAI attributes, and a workflow run
read back as one trace shaped run → step → call."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tallygate.errors import ConfigError
from tallygate.observe.tracing import TracingRecorder, make_provider, run_trace_id
from tallygate.types import CallRecord, Outcome


@pytest.fixture
def setup() -> tuple[TracingRecorder, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TracingRecorder(provider, idle_seconds=30), exporter


def _call(rid: str, ts: float, step: str | None, *, run: str | None = "ticket-42",
          **kw: object) -> CallRecord:
    base: dict[str, object] = dict(
        outcome=Outcome.OK, status=200, provider="openai", feature="agent", run=run,
        step=step, step_attempt=1, model_requested="auto", model_used="gpt-4o-mini",
        input_tokens=120, output_tokens=30, cost_nusd=36_000, latency_ms=400)
    base.update(kw)
    return CallRecord(rid, ts, **base)  # type: ignore[arg-type]


def test_call_span_attributes(setup: tuple[TracingRecorder, InMemorySpanExporter]) -> None:
    rec, exporter = setup
    detail = orjson.dumps({"routed": {"from": "auto", "to": "gpt-4o-mini"},
                           "clamp": {"to": 256, "reason": "feature", "requested": None}})
    rec.record(_call("c1", 1000.0, None, run=None, detail=detail.decode()))
    [span] = exporter.get_finished_spans()
    a = span.attributes
    assert span.name == "chat gpt-4o-mini"
    assert a["gen_ai.system"] == "openai" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "auto" and a["gen_ai.response.model"] == "gpt-4o-mini"
    assert a["gen_ai.usage.input_tokens"] == 120 and a["gen_ai.usage.output_tokens"] == 30
    assert a["gen_ai.request.max_tokens"] == 256
    assert a["tallygate.feature"] == "agent" and a["tallygate.attempt"] == 1
    assert a["tallygate.outcome"] == "ok" and a["tallygate.cost_nusd"] == 36_000
    assert a["tallygate.cost_usd"] == pytest.approx(0.000036)
    assert orjson.loads(a["tallygate.decision"])["routed"]["to"] == "gpt-4o-mini"
    assert span.start_time == 1000 * 10**9 and span.end_time == 1000 * 10**9 + 400 * 10**6
    assert span.parent is None  # no run: a standalone span


def test_rejected_call_is_an_error_span(
        setup: tuple[TracingRecorder, InMemorySpanExporter]) -> None:
    rec, exporter = setup
    rec.record(_call("c2", 5.0, None, run=None, outcome=Outcome.REJECTED, status=429,
                     model_used=None, error_code="budget_exceeded", input_tokens=0))
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "budget_exceeded"


def test_run_is_one_trace_of_steps_and_calls(
        setup: tuple[TracingRecorder, InMemorySpanExporter]) -> None:
    rec, exporter = setup
    rec.record(_call("p1", 100.0, "planning"))
    rec.record(_call("e1", 101.0, "execution"))
    rec.record(_call("e2", 102.0, "execution", step_attempt=2))
    rec.record(_call("v1", 103.0, "verification", latency_ms=1_500))
    rec.record(_call("other", 103.0, "planning", run="ticket-43"))
    assert len(exporter.get_finished_spans()) == 5  # only calls end while the run is live
    assert rec.flush(103.0 + 10) == 0  # not idle yet
    assert rec.flush(104.5 + 30) == 6  # 4 steps + 2 runs
    spans = exporter.get_finished_spans()
    mine = [s for s in spans if s.attributes.get("tallygate.run") == "ticket-42"]
    want = int.from_bytes(hashlib.sha256(b"ticket-42").digest()[:16], "big")
    assert want == run_trace_id("ticket-42")
    assert {s.context.trace_id for s in mine} == {want}
    [run] = [s for s in mine if s.name == "run ticket-42"]
    steps = {s.name: s for s in mine if s.name.startswith("step ")}
    assert set(steps) == {"step planning", "step execution", "step verification"}
    assert all(s.parent.span_id == run.context.span_id for s in steps.values())
    calls = [s for s in mine if s.name.startswith("chat ")]
    by_step = {}
    for call in calls:
        by_step.setdefault(call.parent.span_id, []).append(call.attributes["tallygate.request_id"])
    assert by_step == {steps["step planning"].context.span_id: ["p1"],
                       steps["step execution"].context.span_id: ["e1", "e2"],
                       steps["step verification"].context.span_id: ["v1"]}
    # Run and step spans cover their calls, from the first start to the last end.
    assert run.start_time == 100 * 10**9 and run.end_time == 104_500_000_000
    ex = steps["step execution"]
    assert (ex.start_time, ex.end_time) == (101 * 10**9, 102_400_000_000)
    other = [s for s in spans if s.attributes.get("tallygate.run") == "ticket-43"]
    assert {s.context.trace_id for s in other} == {run_trace_id("ticket-43")}


def test_close_ends_open_spans(setup: tuple[TracingRecorder, InMemorySpanExporter]) -> None:
    rec, exporter = setup
    rec.record(_call("p1", 100.0, "planning"))
    rec.close()
    assert sorted(s.name for s in exporter.get_finished_spans()) == [
        "chat gpt-4o-mini", "run ticket-42", "step planning"]


def test_exporter_options() -> None:
    assert make_provider("none") is None
    provider = make_provider("console")
    assert provider is not None
    provider.shutdown()
    with pytest.raises(ConfigError):
        make_provider("zipkin")  # type: ignore[arg-type]


