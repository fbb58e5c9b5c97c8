from parley.pipeline.timeline import MARKS, TurnTimeline


def test_timeline_stages_and_latencies() -> None:
    t = TurnTimeline()
    for i, m in enumerate(MARKS):
        t.mark(m, at_ns=1_000_000 * (10 * i))
    t.mark("last_voiced", at_ns=999_999_999)  # the first mark wins
    assert t.is_monotone()
    assert t.stages() == {
        "endpointing": 10.0,
        "asr_final": 10.0,
        "llm_first_token": 10.0,
        "tts_first_audio": 10.0,
        "send": 10.0,
    }
    assert t.response_latency_ms == 40.0
    assert t.turn_gap_ms == 50.0
    d = t.to_dict()
    assert d["marks_ms"] == {m: 10.0 * i for i, m in enumerate(MARKS)}


def test_timeline_partial_and_non_monotone() -> None:
    t = TurnTimeline()
    t.mark("end_of_turn", at_ns=10)
    t.mark("asr_final", at_ns=5)
    assert not t.is_monotone()
    assert t.stages() == {"asr_final": -5e-6}
    assert t.turn_gap_ms is None
