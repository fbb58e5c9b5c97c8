"""OpenTelemetry traces of turns: one trace per response, one child span per timeline stage.

Optional: OpenTelemetry is imported only when tracing is switched on (``pip install
parley[otel]``). Without it, or without the standard environment asking for traces, a
:class:`TurnTracer` is disabled and every call is a no-op; nothing here can fail a session.

Spans are written after the fact from the turn's :class:`~parley.pipeline.timeline.TurnTimeline`
(``perf_counter_ns`` marks) with explicit start and end times: the marks are converted to epoch
nanoseconds through one ``(time_ns, perf_counter_ns)`` pair taken when the turn is recorded.
This module records spans; it never opens sockets itself (the exporter does, in its own thread).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from parley import __version__
from parley.pipeline.events import ResponseDone
from parley.pipeline.timeline import STAGES

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = ["SERVICE_NAME", "TurnTracer"]

log = logging.getLogger("parley.server.tracing")

SERVICE_NAME = "parley"
# Any of these in the environment switches tracing on (OTEL_TRACES_EXPORTER=none switches it off).
_SWITCHES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


class TurnTracer:
    """Records each finished turn as a trace; disabled when built without a provider."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self._tracer: Tracer | None = (
            None if provider is None else provider.get_tracer("parley", __version__)
        )

    @classmethod
    def disabled(cls) -> TurnTracer:
        return cls(None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TurnTracer:
        """A tracer configured by the standard ``OTEL_*`` variables, or a disabled one.

        On when ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, or a comma list) or
        ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set, unless ``OTEL_SDK_DISABLED=true`` or the
        exporter is ``none``. The OTLP exporter (HTTP/protobuf; gRPC if that exporter is
        installed and asked for) reads its endpoint, headers and timeout from the process
        environment as usual. ``env`` (default ``os.environ``) only decides whether and which.
        """
        env = os.environ if env is None else env
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls.disabled()
        if not any(env.get(name, "").strip() for name in _SWITCHES):
            return cls.disabled()
        names = [
            n for n in env.get("OTEL_TRACES_EXPORTER", "").lower().replace(" ", "").split(",") if n
        ] or ["otlp"]
        try:
            provider = _provider(names, env)
        except ImportError as exc:
            log.warning(
                "tracing is configured but OpenTelemetry is not installed "
                "(pip install 'parley[otel]'); traces are off: %s",
                exc,
            )
            return cls.disabled()
        return cls.disabled() if provider is None else cls(provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def record_turn(self, session_id: str, response_id: str, done: ResponseDone) -> None:
        """One trace: a ``turn`` root span and one child span per stage whose marks are set.

        The root spans ``last_voiced`` (or the earliest mark) to ``first_audio_out`` (or now,
        when the response ended without audio).
        """
        tracer = self._tracer
        if tracer is None:
            return
        from opentelemetry.context import Context
        from opentelemetry.trace import Status, StatusCode, set_span_in_context

        wall_ns, perf_ns = time.time_ns(), time.perf_counter_ns()

        def epoch(ns: int) -> int:
            return wall_ns + (ns - perf_ns)

        marks = done.timeline.marks
        start = marks.get("last_voiced", min(marks.values(), default=perf_ns))
        end = max(marks.get("first_audio_out", perf_ns), start)
        attributes: dict[str, str | int | float] = {
            "parley.session_id": session_id,
            "parley.response_id": response_id,
            "parley.status": done.status,
            "parley.audio_ms": round(done.audio_ms, 1),
        }
        if done.turn_id is not None:
            attributes["parley.turn_id"] = done.turn_id
        if done.reason is not None:
            attributes["parley.reason"] = done.reason
        if done.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = done.usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = done.usage.output_tokens
        # An empty context: each turn is a trace of its own, whatever span is current.
        root = tracer.start_span(
            "turn", context=Context(), attributes=attributes, start_time=epoch(start)
        )
        if done.status == "failed":
            message = done.error.message if done.error is not None else None
            root.set_status(Status(StatusCode.ERROR, message))
        parent = set_span_in_context(root)
        for stage, first, last in STAGES:
            if first in marks and last in marks:
                begin = marks[first]
                child = tracer.start_span(stage, context=parent, start_time=epoch(begin))
                child.end(end_time=epoch(max(marks[last], begin)))
        root.end(end_time=epoch(end))

    def shutdown(self) -> None:
        """Flush and stop the exporters (at server shutdown)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


def _provider(names: list[str], env: Mapping[str, str]) -> TracerProvider | None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    wanted = [_exporter(name, env) for name in names if name != "none"]
    exporters = [e for e in wanted if e is not None]
    if not exporters:
        return None
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = SDKTracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter | None:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("unknown OTEL_TRACES_EXPORTER %r ignored (parley knows otlp, console)", name)
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol.strip().lower() == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GRPCSpanExporter,
            )
        except ImportError:
            log.warning("OTLP over gRPC is not installed; exporting traces over HTTP instead")
        else:
            exporter: SpanExporter = GRPCSpanExporter()
            return exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
