"""Prometheus metrics of one app, served at ``/metrics``.

Every app owns a :class:`~prometheus_client.CollectorRegistry` (never the process-global one),
so two apps in one process (tests) count apart. What is measured comes from the pipeline's own
events and each turn's :class:`~parley.pipeline.timeline.TurnTimeline`; this module keeps no
clock of its own and never blocks: each call only increments or observes.

Exposed (counters get ``_total`` appended by the exposition format):

=====================================  =========  ============================================
``parley_turn_gap_seconds``            histogram  last voiced sample -> first reply audio out
``parley_response_latency_seconds``    histogram  end of turn decided -> first reply audio out
``parley_stage_seconds{stage}``        histogram  each timeline stage (endpointing, asr_final,
                                                  llm_first_token, tts_first_audio, send)
``parley_active_sessions``             gauge      Realtime sessions open now
``parley_sessions_total``              counter    Realtime sessions opened
``parley_engine_calls_total``          counter    engine calls by ``kind`` and ``engine``
``parley_engine_errors_total``         counter    engine calls that raised, same labels
``parley_audio_in_seconds_total``      counter    input audio received
``parley_audio_out_seconds_total``     counter    reply audio emitted
``parley_barge_ins_total``             counter    replies the listener spoke over (once each)
``parley_responses_total{status}``     counter    responses ended, by status
``parley_batch_size{engine}``          histogram  requests per batch of a batched engine
``parley_cost_usd_total{tenant,``      counter    what engine calls cost, in USD, by tenant,
``stage,engine}``                                 stage and engine instance (the ledger's)
``parley_budget_remaining_usd{``       gauge      what a budget has left this period (tenant,
``tenant,key}``                                   key; key "" is the whole tenant's budget)
=====================================  =========  ============================================

``parley_batch_size`` is reported by the batching scheduler of the neural engines (whisper,
vits, piper); it stays empty with the embedded engines, which do not batch.
"""

from __future__ import annotations

from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from parley.pipeline.events import (
    PipelineEvent,
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
)

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Metrics"]

# Voice latency lives between a few ms (one stage) and a few s (a slow turn); past 10 s is +Inf.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Response ids whose barge-in was counted; a barge-in may show up as both a cancelled response
# and an interrupted playback, and must count once. Old ids age out.
_BARGE_IN_MEMORY = 4096


class Metrics:
    """The counters of one app; the server calls these methods, ``route()`` serves them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        r = self.registry
        self.turn_gap = Histogram(
            "parley_turn_gap_seconds",
            "Last voiced input sample to first reply audio out.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.response_latency = Histogram(
            "parley_response_latency_seconds",
            "End of turn decided to first reply audio out.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "parley_stage_seconds",
            "Duration of each stage of a turn's timeline.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active_sessions = Gauge(
            "parley_active_sessions", "Realtime sessions open now.", registry=r
        )
        self.sessions = Counter("parley_sessions", "Realtime sessions opened.", registry=r)
        self.engine_calls = Counter(
            "parley_engine_calls", "Engine calls.", ["kind", "engine"], registry=r
        )
        self.engine_errors = Counter(
            "parley_engine_errors", "Engine calls that raised.", ["kind", "engine"], registry=r
        )
        self.audio_in_seconds = Counter(
            "parley_audio_in_seconds", "Input audio received, in seconds.", registry=r
        )
        self.audio_out_seconds = Counter(
            "parley_audio_out_seconds", "Reply audio emitted, in seconds.", registry=r
        )
        self.barge_ins = Counter("parley_barge_ins", "Replies the listener spoke over.", registry=r)
        self.responses = Counter("parley_responses", "Responses ended.", ["status"], registry=r)
        self.batch_size = Histogram(
            "parley_batch_size",
            "Requests per batch of a batched engine (the batching scheduler reports it).",
            ["engine"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.cost_usd = Counter(
            "parley_cost_usd",
            "What engine calls cost, in USD (the ledger's price table).",
            ["tenant", "stage", "engine"],
            registry=r,
        )
        self.budget_remaining_usd = Gauge(
            "parley_budget_remaining_usd",
            "What a budget has left this period, in USD (key '': the tenant's own budget).",
            ["tenant", "key"],
            registry=r,
        )
        self._barged: OrderedDict[str, None] = OrderedDict()

    # --- what the server reports ---------------------------------------------------------------

    def session_opened(self) -> None:
        self.sessions.inc()
        self.active_sessions.inc()

    def session_closed(self) -> None:
        self.active_sessions.dec()

    def audio_in(self, seconds: float) -> None:
        self.audio_in_seconds.inc(seconds)

    def engine_call(self, kind: str, engine: str) -> None:
        self.engine_calls.labels(kind, engine).inc()

    def engine_error(self, kind: str, engine: str) -> None:
        self.engine_errors.labels(kind, engine).inc()

    def batch(self, engine: str, size: int) -> None:
        self.batch_size.labels(engine).observe(size)

    def cost(self, tenant: str, stage: str, engine: str, usd: float) -> None:
        """Count what one engine call cost (a free call still makes its series appear)."""
        self.cost_usd.labels(tenant, stage, engine).inc(max(0.0, usd))

    def budget_remaining(self, tenant: str, key_id: str, usd: float) -> None:
        self.budget_remaining_usd.labels(tenant, key_id).set(usd)

    def observe(self, event: PipelineEvent) -> None:
        """Account for one pipeline event; events that carry nothing measured are ignored."""
        match event:
            case ResponseAudio(frame=frame):
                self.audio_out_seconds.inc(frame.duration_s)
            case ResponseDone():
                self._response_done(event)
            case PlaybackInterrupted(response_id=response_id):
                self._barge_in(response_id)
            case _:
                pass

    def _response_done(self, done: ResponseDone) -> None:
        self.responses.labels(done.status).inc()
        timeline = done.timeline
        for stage, ms in timeline.stages().items():
            self.stage.labels(stage).observe(ms / 1000)
        if (gap := timeline.turn_gap_ms) is not None:
            self.turn_gap.observe(gap / 1000)
        if (latency := timeline.response_latency_ms) is not None:
            self.response_latency.observe(latency / 1000)
        if done.status == "cancelled" and done.reason == "turn_detected":
            self._barge_in(done.response_id)

    def _barge_in(self, response_id: str) -> None:
        if response_id in self._barged:
            return
        self._barged[response_id] = None
        if len(self._barged) > _BARGE_IN_MEMORY:
            self._barged.popitem(last=False)
        self.barge_ins.inc()

    # --- serving -------------------------------------------------------------------------------

    def route(self, path: str = "/metrics") -> Route:
        """``GET /metrics``: the Prometheus text format, or OpenMetrics if the scraper asks."""

        async def metrics(request: Request) -> Response:
            encode, content_type = choose_encoder(request.headers.get("accept", ""))
            return Response(encode(self.registry), headers={"Content-Type": content_type})

        return Route(path, metrics, methods=["GET"])
