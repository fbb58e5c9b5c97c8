"""Prometheus metrics: what ``/metrics`` serves after real turns, and how events are counted."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from parley.audio.frames import Frame
from parley.bench.clips import Clip
from parley.config import load_settings
from parley.engines.base import Usage
from parley.engines.registry import Engines, build_engines
from parley.pipeline.events import (
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
    ResponseStatus,
    SpeechStarted,
)
from parley.pipeline.timeline import TurnTimeline
from parley.server.app import create_app
from parley.server.metrics import LATENCY_BUCKETS, Metrics
from parley.server.tracing import TurnTracer
from tests.server.realtime_client import speech_24k

MS = 1_000_000
STAGES = ("endpointing", "asr_final", "llm_first_token", "tts_first_audio", "send")


@pytest.fixture(scope="module")
def engines() -> Engines:
    return build_engines(load_settings(env={"PARLEY_PROFILE": "fast"}))


@pytest.fixture
def client(engines: Engines) -> Iterator[TestClient]:
    app = create_app(
        load_settings(env={"PARLEY_PROFILE": "fast"}),
        engines,
        auth=False,
        metrics=Metrics(),
        tracer=TurnTracer(),
    )
    with TestClient(app) as client:
        yield client


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def until(ws: Any, kind: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        event = ws.receive_json()
        events.append(event)
        assert event["type"] != "error", event
        if event["type"] == kind:
            return events


def wait_for(client: TestClient, name: str, expected: float) -> Samples:
    """The server ends a session just after the client closes; give it a moment."""
    deadline = time.monotonic() + 5
    while (samples := scrape(client)) and value(samples, name) != expected:
        assert time.monotonic() < deadline, f"{name} != {expected}"
        time.sleep(0.01)
    return samples


def test_metrics_before_any_session(client: TestClient) -> None:
    samples = scrape(client)
    assert value(samples, "parley_active_sessions") == 0
    assert value(samples, "parley_sessions_total") == 0
    assert value(samples, "parley_turn_gap_seconds_count") == 0
    # Declared for the batching scheduler, empty until it reports.
    families = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert {"parley_batch_size", "parley_stage_seconds", "parley_barge_ins"} <= families


def test_metrics_openmetrics_on_request(client: TestClient) -> None:
    response = client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_metrics_count_a_text_turn(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime") as ws:
        assert ws.receive_json()["type"] == "session.created"
        assert value(scrape(client), "parley_active_sessions") == 1
        silence = np.zeros(2400, np.int16).tobytes()  # 100 ms at 24 kHz
        ws.send_json(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(silence).decode()}
        )
        ws.send_json(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "How do I start parley?"}],
                },
            }
        )
        ws.send_json({"type": "response.create"})
        events = until(ws, "response.done")
        assert events[-1]["response"]["status"] == "completed"
        during = scrape(client)
    after = wait_for(client, "parley_active_sessions", 0)

    assert value(during, "parley_active_sessions") == 1
    assert value(after, "parley_sessions_total") == 1
    assert value(after, "parley_responses_total", status="completed") == 1
    assert value(after, "parley_engine_calls_total", kind="llm", engine="faq") >= 1
    assert value(after, "parley_engine_calls_total", kind="tts", engine="espeak") >= 1
    assert value(after, "parley_engine_errors_total", kind="llm", engine="faq") == 0
    assert value(after, "parley_audio_in_seconds_total") == pytest.approx(0.1)
    audio_out = sum(
        len(base64.b64decode(e["delta"])) / 2 / 24000
        for e in events
        if e["type"] == "response.output_audio.delta"
    )
    assert audio_out > 0
    assert value(after, "parley_audio_out_seconds_total") == pytest.approx(audio_out, rel=1e-6)
    assert value(after, "parley_response_latency_seconds_count") == 1
    assert value(after, "parley_response_latency_seconds_sum") > 0
    for stage in ("asr_final", "llm_first_token", "tts_first_audio", "send"):
        assert value(after, "parley_stage_seconds_count", stage=stage) == 1
    # A response.create without speech has no last voiced sample: no turn gap, no endpointing.
    assert value(after, "parley_turn_gap_seconds_count") == 0
    assert value(after, "parley_stage_seconds_count", stage="endpointing") == 0
    assert value(after, "parley_barge_ins_total") == 0


def test_metrics_count_a_spoken_turn(client: TestClient, clips: dict[str, Clip]) -> None:
    audio = speech_24k(clips["en_goforward_raw"].path).tobytes()
    with client.websocket_connect("/v1/realtime") as ws:
        assert ws.receive_json()["type"] == "session.created"
        for i in range(0, len(audio), 9600):  # 200 ms packets
            chunk = base64.b64encode(audio[i : i + 9600]).decode()
            ws.send_json({"type": "input_audio_buffer.append", "audio": chunk})
        assert until(ws, "response.done")[-1]["response"]["status"] == "completed"
    samples = wait_for(client, "parley_active_sessions", 0)
    assert value(samples, "parley_audio_in_seconds_total") == pytest.approx(len(audio) / 48000)
    assert value(samples, "parley_engine_calls_total", kind="vad", engine="silero") > 10
    assert value(samples, "parley_engine_calls_total", kind="asr", engine="pocketsphinx") >= 1
    assert value(samples, "parley_turn_gap_seconds_count") == 1
    for stage in STAGES:
        assert value(samples, "parley_stage_seconds_count", stage=stage) == 1


def test_metrics_closed_session_is_not_active(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime") as ws:
        ws.receive_json()
        ws.close()
    samples = wait_for(client, "parley_active_sessions", 0)
    assert value(samples, "parley_sessions_total") == 1


# --- Metrics.observe on synthetic events ---------------------------------------------------


def timeline() -> TurnTimeline:
    return TurnTimeline(
        {
            "last_voiced": 0,
            "end_of_turn": 500 * MS,
            "asr_final": 520 * MS,
            "llm_first_token": 700 * MS,
            "tts_first_audio": 760 * MS,
            "first_audio_out": 761 * MS,
        }
    )


def done(
    response_id: str, status: ResponseStatus = "completed", reason: str | None = None
) -> ResponseDone:
    return ResponseDone(
        response_id, "item", "turn", status, reason, "", 0.0, Usage(1, 1), timeline()
    )


def interrupted(response_id: str) -> PlaybackInterrupted:
    return PlaybackInterrupted(response_id, "item", 100.0, 800.0, "Hel")


def get(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_metrics_observe_timeline_histograms() -> None:
    metrics = Metrics()
    metrics.observe(done("r1"))
    metrics.observe(SpeechStarted("turn", "item", 0.0))  # nothing to count
    assert get(metrics, "parley_turn_gap_seconds_sum") == pytest.approx(0.761)
    assert get(metrics, "parley_response_latency_seconds_sum") == pytest.approx(0.261)
    assert get(metrics, "parley_stage_seconds_sum", stage="endpointing") == pytest.approx(0.5)
    assert get(metrics, "parley_stage_seconds_sum", stage="send") == pytest.approx(0.001)
    # 1 ms is under the first bucket (5 ms); 500 ms lands in its own bucket.
    assert get(metrics, "parley_stage_seconds_bucket", stage="send", le="0.005") == 1
    assert get(metrics, "parley_stage_seconds_bucket", stage="endpointing", le="0.4") == 0
    assert get(metrics, "parley_stage_seconds_bucket", stage="endpointing", le="0.5") == 1
    assert LATENCY_BUCKETS[0] == 0.005 and LATENCY_BUCKETS[-1] == 10.0
    assert get(metrics, "parley_responses_total", status="completed") == 1


def test_metrics_observe_audio_out() -> None:
    metrics = Metrics()
    metrics.observe(ResponseAudio("r", "i", Frame.silence(20, 24000)))
    metrics.observe(ResponseAudio("r", "i", Frame.silence(30, 16000)))
    assert get(metrics, "parley_audio_out_seconds_total") == pytest.approx(0.05)


def test_metrics_count_each_barge_in_once() -> None:
    metrics = Metrics()
    # Spoken over while generating and playing: a cancelled response, then a cut playback.
    metrics.observe(done("r1", "cancelled", "turn_detected"))
    metrics.observe(interrupted("r1"))
    # Spoken over after generation ended: only the cut playback.
    metrics.observe(done("r2"))
    metrics.observe(interrupted("r2"))
    # Spoken over before any audio: only the cancelled response.
    metrics.observe(done("r3", "cancelled", "turn_detected"))
    # The client cancelling is not a barge-in.
    metrics.observe(done("r4", "cancelled", "client_cancelled"))
    assert get(metrics, "parley_barge_ins_total") == 3
    assert get(metrics, "parley_responses_total", status="cancelled") == 3
    assert get(metrics, "parley_responses_total", status="completed") == 1


def test_metrics_sessions_engines_and_batches() -> None:
    metrics = Metrics()
    metrics.session_opened()
    metrics.session_opened()
    metrics.session_closed()
    metrics.engine_call("llm", "faq")
    metrics.engine_error("llm", "faq")
    metrics.audio_in(0.25)
    metrics.batch("whisper", 6)
    assert get(metrics, "parley_active_sessions") == 1
    assert get(metrics, "parley_sessions_total") == 2
    assert get(metrics, "parley_engine_calls_total", kind="llm", engine="faq") == 1
    assert get(metrics, "parley_engine_errors_total", kind="llm", engine="faq") == 1
    assert get(metrics, "parley_audio_in_seconds_total") == 0.25
    assert get(metrics, "parley_batch_size_bucket", engine="whisper", le="8.0") == 1


def test_metrics_registries_are_per_app() -> None:
    a, b = Metrics(), Metrics()
    a.session_opened()
    assert get(a, "parley_sessions_total") == 1
    assert get(b, "parley_sessions_total") == 0


def test_metrics_cost_and_budget_remaining() -> None:
    metrics = Metrics()
    metrics.cost("acme", "llm", "cloud-llm", 0.25)
    metrics.cost("acme", "llm", "cloud-llm", 0.5)
    metrics.cost("acme", "asr", "pocketsphinx", 0.0)  # free: the series is there, at 0
    metrics.budget_remaining("acme", "", 9.25)
    metrics.budget_remaining("acme", "key_1", 1.5)
    metrics.budget_remaining("acme", "key_1", 1.0)
    assert (
        get(metrics, "parley_cost_usd_total", tenant="acme", stage="llm", engine="cloud-llm")
        == 0.75
    )
    labels = {"tenant": "acme", "stage": "asr", "engine": "pocketsphinx"}
    assert ("parley_cost_usd_total", frozenset(labels.items())) in scrape_registry(metrics)
    assert get(metrics, "parley_budget_remaining_usd", tenant="acme", key="") == 9.25
    assert get(metrics, "parley_budget_remaining_usd", tenant="acme", key="key_1") == 1.0


def scrape_registry(metrics: Metrics) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in metrics.registry.collect()
        for s in family.samples
    }
