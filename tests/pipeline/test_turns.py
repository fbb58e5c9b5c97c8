import pytest

from parley.pipeline.turns import SpeechEdge, TurnDetector, TurnState

W = 32.0  # ms per window


def run(probs: list[float], **kw: float) -> list[SpeechEdge]:
    det = TurnDetector(**kw)  # type: ignore[arg-type]
    edges = []
    for i, p in enumerate(probs):
        e = det.feed(p, i * W, (i + 1) * W)
        if e:
            edges.append(e)
    return edges


@pytest.mark.parametrize(
    ("probs", "kw", "expected"),
    [
        ([0.1] * 20, {}, []),
        # Starts at the first window at the threshold; stops after 500 ms of silence (16 windows)
        # at the end of the last voiced window.
        (
            [0.0] * 3 + [0.9] * 10 + [0.0] * 16,
            {},
            [SpeechEdge(True, 96.0), SpeechEdge(False, 416.0)],
        ),
        ([0.0] * 3 + [0.9] * 10 + [0.0] * 15, {}, [SpeechEdge(True, 96.0)]),
        # Hysteresis: 0.4 is below the start threshold but above the low threshold (0.35), so it
        # keeps a turn going.
        ([0.9] + [0.4] * 20 + [0.0] * 16, {}, [SpeechEdge(True, 0.0), SpeechEdge(False, 672.0)]),
        ([0.4] * 20, {}, []),
        # A short pause does not end the turn; silence_duration_ms is honoured.
        (
            [0.9] * 2 + [0.0] * 5 + [0.9] * 2 + [0.0] * 7,
            {"silence_duration_ms": 200},
            [SpeechEdge(True, 0.0), SpeechEdge(False, 288.0)],
        ),
        ([0.6] * 2, {"threshold": 0.7}, []),
    ],
)
def test_turn_detector_edges(
    probs: list[float], kw: dict[str, float], expected: list[SpeechEdge]
) -> None:
    assert run(probs, **kw) == expected


def test_turn_detector_force_stop() -> None:
    det = TurnDetector()
    assert det.force_stop() is None
    det.feed(0.9, 0, 32)
    assert det.state is TurnState.SPEECH
    assert det.force_stop() == SpeechEdge(False, 32.0)
    assert det.state is TurnState.SILENCE
