"""Turn traces: one root span per turn, one child per stage, times from the turn's timeline."""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from parley.engines.base import Usage
from parley.errors import EngineError
from parley.pipeline.events import ResponseDone
from parley.pipeline.timeline import TurnTimeline
from parley.server.tracing import TurnTracer

STAGES = ["endpointing", "asr_final", "llm_first_token", "tts_first_audio", "send"]
MS = 1_000_000


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[TurnTracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = TurnTracer(provider)
    yield tracer
    tracer.shutdown()


def full_timeline(origin: int | None = None) -> TurnTimeline:
    t0 = time.perf_counter_ns() - 2000 * MS if origin is None else origin
    return TurnTimeline(
        {
            "last_voiced": t0,
            "end_of_turn": t0 + 500 * MS,
            "asr_final": t0 + 620 * MS,
            "llm_first_token": t0 + 900 * MS,
            "tts_first_audio": t0 + 1100 * MS,
            "first_audio_out": t0 + 1102 * MS,
        }
    )


def done(timeline: TurnTimeline, **kw: object) -> ResponseDone:
    fields: dict[str, object] = {
        "response_id": "resp_1",
        "item_id": "item_1",
        "turn_id": "turn_1",
        "status": "completed",
        "reason": None,
        "text": "Hello.",
        "audio_ms": 840.0,
        "usage": Usage(21, 4),
        "timeline": timeline,
    }
    fields.update(kw)
    return ResponseDone(**fields)  # type: ignore[arg-type]


def split(spans: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    (root,) = [s for s in spans if s.name == "turn"]
    children = sorted((s for s in spans if s.name != "turn"), key=lambda s: s.start_time or 0)
    return root, children


def test_trace_of_a_full_turn(tracer: TurnTracer, exporter: InMemorySpanExporter) -> None:
    before = time.time_ns()
    tracer.record_turn("sess_1", "resp_1", done(full_timeline()))
    spans = exporter.get_finished_spans()
    assert len(spans) == 6
    root, children = split(spans)
    assert root.parent is None
    assert [c.name for c in children] == STAGES
    for child in children:
        assert child.parent is not None
        assert child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
    assert root.attributes is not None
    assert dict(root.attributes) == {
        "parley.session_id": "sess_1",
        "parley.response_id": "resp_1",
        "parley.turn_id": "turn_1",
        "parley.status": "completed",
        "parley.audio_ms": 840.0,
        "gen_ai.usage.input_tokens": 21,
        "gen_ai.usage.output_tokens": 4,
    }
    # Times: epoch ns, monotone, stages tile the root exactly.
    assert root.start_time is not None and root.end_time is not None
    assert before - 3000 * MS < root.start_time < before
    assert root.end_time - root.start_time == 1102 * MS
    assert children[0].start_time == root.start_time
    assert children[-1].end_time == root.end_time
    for a, b in itertools.pairwise(children):
        assert a.end_time == b.start_time
    durations = [(c.end_time or 0) - (c.start_time or 0) for c in children]
    assert durations == [500 * MS, 120 * MS, 280 * MS, 200 * MS, 2 * MS]
    assert root.status.status_code is StatusCode.UNSET


def test_trace_each_turn_is_its_own_trace(
    tracer: TurnTracer, exporter: InMemorySpanExporter
) -> None:
    provider = tracer.provider
    assert isinstance(provider, TracerProvider)
    with provider.get_tracer("test").start_as_current_span("ambient"):
        tracer.record_turn("s", "resp_1", done(full_timeline()))
    tracer.record_turn("s", "resp_2", done(full_timeline(), response_id="resp_2"))
    roots = [s for s in exporter.get_finished_spans() if s.name == "turn"]
    assert len(roots) == 2
    assert all(r.parent is None for r in roots)
    assert roots[0].context.trace_id != roots[1].context.trace_id


def test_trace_of_a_partial_turn(tracer: TurnTracer, exporter: InMemorySpanExporter) -> None:
    """response.create without speech, cancelled before any audio: no last_voiced, no audio."""
    t0 = time.perf_counter_ns() - 100 * MS
    timeline = TurnTimeline({"end_of_turn": t0, "asr_final": t0, "llm_first_token": t0 + 30 * MS})
    tracer.record_turn(
        "s", "resp_1", done(timeline, status="cancelled", reason="turn_detected", usage=None)
    )
    root, children = split(exporter.get_finished_spans())
    assert [c.name for c in children] == ["asr_final", "llm_first_token"]
    assert root.start_time == children[0].start_time
    assert root.end_time is not None and children[-1].end_time is not None
    # Without first audio the turn ends when it is recorded: after every stage.
    assert root.end_time >= children[-1].end_time
    assert root.end_time - (root.start_time or 0) >= 100 * MS
    assert root.attributes is not None
    assert root.attributes["parley.reason"] == "turn_detected"
    assert "gen_ai.usage.input_tokens" not in root.attributes


def test_trace_of_a_failed_turn(tracer: TurnTracer, exporter: InMemorySpanExporter) -> None:
    tracer.record_turn(
        "s", "r", done(TurnTimeline(), status="failed", error=EngineError("llm down"))
    )
    (root,) = exporter.get_finished_spans()
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "llm down"


def test_tracing_off_without_otel_env() -> None:
    tracer = TurnTracer.from_env(env={})
    assert not tracer.enabled
    tracer.record_turn("s", "r", done(full_timeline()))  # a no-op
    tracer.shutdown()
    assert not TurnTracer.from_env(env={"OTEL_TRACES_EXPORTER": "none"}).enabled
    assert not TurnTracer.from_env(
        env={"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    ).enabled
    assert not TurnTracer.disabled().enabled


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_TRACES_EXPORTER": "console"},
    ],
)
def test_tracing_on_with_otel_env(env: dict[str, str]) -> None:
    tracer = TurnTracer.from_env(env=env)
    try:
        assert tracer.enabled
        provider = tracer.provider
        assert isinstance(provider, TracerProvider)
        assert provider.resource.attributes["service.name"] == "parley"
    finally:
        tracer.shutdown()  # nothing was recorded: nothing is sent


def test_tracing_off_when_opentelemetry_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with caplog.at_level(logging.WARNING, logger="parley.server.tracing"):
        tracer = TurnTracer.from_env(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert not tracer.enabled
    assert "not installed" in caplog.text


def test_tracing_unknown_exporter_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="parley.server.tracing"):
        tracer = TurnTracer.from_env(env={"OTEL_TRACES_EXPORTER": "zipkin-ish"})
    assert not tracer.enabled
    assert "zipkin-ish" in caplog.text
