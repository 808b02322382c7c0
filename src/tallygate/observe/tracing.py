"""OpenTelemetry spans derived from finished calls, with the GenAI semantic conventions.

Imported only when tracing is configured, so a gateway without tracing never loads
OpenTelemetry. Spans are made after the fact from each CallRecord with explicit times
(start = row.ts, end = row.ts + latency), so nothing waits on the request path.

A workflow run (`X-Tallygate-Run`) is one trace: its trace id is the first 16 bytes of
SHA-256 of the run id, so every replica puts its spans of the run in the same trace. Under
a virtual root (span id from the run id, never emitted) each process keeps one `run` span,
a `step` span per step under it, and each call's span under its step. Run and step spans
stay open while calls arrive and are ended by `flush()` once idle (or at `close()`),
spanning their first call's start to their last call's end. Calls without a run are
standalone spans."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from tallygate.errors import ConfigError
from tallygate.extras import MissingExtra, install_hint
from tallygate.types import NANO_PER_USD, CallRecord, Outcome

ExporterName = Literal["otlp", "console", "none"]
TRACER_NAME = "tallygate"
DEFAULT_IDLE_SECONDS = 30.0
MAX_OPEN_RUNS = 10_000
_NS = 1_000_000_000


def run_trace_id(run: str) -> int:
    """The trace id of a run: the first 16 bytes of SHA-256 of its id."""
    return int.from_bytes(hashlib.sha256(run.encode()).digest()[:16], "big") or 1


def run_root_span_id(run: str) -> int:
    return int.from_bytes(hashlib.sha256(b"root:" + run.encode()).digest()[:8], "big") or 1


def make_provider(exporter: ExporterName = "console", endpoint: str | None = None,
                  service_name: str = "tallygate") -> TracerProvider | None:
    """A tracer provider exporting in batches off the event loop; None for "none"."""
    if exporter == "none":
        return None
    from opentelemetry.sdk.resources import Resource

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        span_exporter: Any = ConsoleSpanExporter()
    elif exporter == "otlp":
        span_exporter = _otlp_exporter(endpoint)
    else:
        raise ConfigError(f"tracing.exporter: expected otlp, console or none, not {exporter!r}")
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def _otlp_exporter(endpoint: str | None) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise MissingExtra(
            f"tracing.exporter: otlp needs the otel extra: {install_hint('otel')}") from None
    return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()


@dataclass(slots=True)
class _Open:
    """A run or step span kept open while its calls arrive."""

    span: Span
    last_end_ns: int
    last_seen: float


class TracingRecorder:
    """A `Recorder` emitting one span per call, grouped into run → step trees."""

    def __init__(self, tracer_provider: TracerProvider | None = None, *,
                 exporter: ExporterName = "console", endpoint: str | None = None,
                 service_name: str = "tallygate",
                 idle_seconds: float = DEFAULT_IDLE_SECONDS) -> None:
        provider = tracer_provider or make_provider(exporter, endpoint, service_name)
        self.provider = provider
        self._owns_provider = tracer_provider is None
        self.tracer = (provider or trace.NoOpTracerProvider()).get_tracer(TRACER_NAME)
        self.idle_seconds = idle_seconds
        self._runs: OrderedDict[str, _Open] = OrderedDict()
        self._steps: OrderedDict[tuple[str, str], _Open] = OrderedDict()

    # ------------------------------------------------------------------ hot path

    def record(self, row: CallRecord) -> None:
        start = int(row.ts * _NS)
        end = start + row.latency_ms * 1_000_000
        parent = self._parent(row, start, end)
        span = self.tracer.start_span(
            _span_name(row), context=parent, kind=SpanKind.CLIENT, start_time=start,
            attributes=call_attributes(row))
        if row.outcome in (Outcome.ERROR, Outcome.REJECTED):
            span.set_status(Status(StatusCode.ERROR, row.error_code or row.outcome.value))
        span.end(end_time=end)

    def _parent(self, row: CallRecord, start: int, end: int) -> Any:
        if row.run is None:
            return None
        run = self._open(self._runs, row.run, row, start, end, None)
        if row.step is None:
            return trace.set_span_in_context(run.span)
        step = self._open(self._steps, (row.run, row.step), row, start, end, run.span)
        return trace.set_span_in_context(step.span)

    def _open(self, table: OrderedDict[Any, _Open], key: Any, row: CallRecord,
              start: int, end: int, parent: Span | None) -> _Open:
        entry = table.get(key)
        if entry is None:
            if len(table) >= MAX_OPEN_RUNS:  # bounded memory: end the oldest first
                _, oldest = table.popitem(last=False)
                oldest.span.end(end_time=oldest.last_end_ns)
            entry = table[key] = _Open(self._start_group(row, start, parent), end, row.ts)
        else:
            table.move_to_end(key)
            entry.last_end_ns = max(entry.last_end_ns, end)
            entry.last_seen = max(entry.last_seen, row.ts + row.latency_ms / 1000)
        return entry

    def _start_group(self, row: CallRecord, start: int, parent: Span | None) -> Span:
        assert row.run is not None
        if parent is None:
            root = SpanContext(run_trace_id(row.run), run_root_span_id(row.run),
                               is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
            ctx = trace.set_span_in_context(NonRecordingSpan(root))
            return self.tracer.start_span(f"run {row.run}", context=ctx, start_time=start,
                                          attributes={"tallygate.run": row.run})
        attrs: dict[str, Any] = {"tallygate.run": row.run, "tallygate.step": row.step or ""}
        return self.tracer.start_span(f"step {row.step}", context=trace.set_span_in_context(
            parent), start_time=start, attributes=attrs)

    # ------------------------------------------------------------------ background

    def flush(self, now: float) -> int:
        """End run and step spans idle for `idle_seconds`; returns how many ended."""
        ended = 0
        for table in (self._steps, self._runs):  # steps first: children end before parents
            for key in [k for k, e in table.items() if now - e.last_seen >= self.idle_seconds]:
                entry = table.pop(key)
                entry.span.end(end_time=entry.last_end_ns)
                ended += 1
        return ended

    def close(self) -> None:
        """End every open span and flush the exporter."""
        self.flush(float("inf"))
        if self.provider is not None and self._owns_provider:
            self.provider.shutdown()
        elif self.provider is not None:
            self.provider.force_flush()


def _operation(row: CallRecord) -> str:
    model = row.model_used or row.model_requested or ""
    return "embeddings" if "embedding" in model else "chat"


def _span_name(row: CallRecord) -> str:
    model = row.model_used or row.model_requested
    return f"{_operation(row)} {model}" if model else _operation(row)


def call_attributes(row: CallRecord) -> dict[str, Any]:
    """GenAI semantic-convention attributes plus tallygate's own, for one call."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": _operation(row),
        "gen_ai.usage.input_tokens": row.input_tokens,
        "gen_ai.usage.output_tokens": row.output_tokens,
        "tallygate.request_id": row.request_id,
        "tallygate.outcome": row.outcome.value,
        "tallygate.cost_usd": row.cost_nusd / NANO_PER_USD,
        "tallygate.cost_nusd": row.cost_nusd,
        "tallygate.exact": row.exact,
        "tallygate.retries": row.retries,
        "http.response.status_code": row.status,
    }
    optional = {
        "gen_ai.system": row.provider,
        "gen_ai.provider.name": row.provider,
        "gen_ai.request.model": row.model_requested or row.model_used,
        "gen_ai.response.model": row.model_used,
        "tallygate.feature": row.feature,
        "tallygate.run": row.run,
        "tallygate.step": row.step,
        "tallygate.attempt": row.step_attempt,
        "error.type": row.error_code,
    }
    attrs.update({k: v for k, v in optional.items() if v is not None})
    if row.cached_tokens:
        attrs["gen_ai.usage.cache_read.input_tokens"] = row.cached_tokens
    if row.detail:
        attrs["tallygate.decision"] = row.detail
        max_tokens = _max_tokens(row.detail)
        if max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = max_tokens
    return attrs


def _max_tokens(detail: str) -> int | None:
    """The output cap the policy set, when the row's detail records a clamp."""
    if '"clamp"' not in detail:
        return None
    try:
        value = json.loads(detail).get("clamp", {}).get("to")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
