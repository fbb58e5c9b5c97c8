"""The conversation engine: turn detection, streaming ASR, LLM -> segmenter -> TTS responses,
barge-in and truncation, history with a context budget, and each turn's latency timeline."""

from parley.pipeline.conversation import Pipeline
from parley.pipeline.events import (
    InputCommitted,
    PipelineEvent,
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
    ResponseStarted,
    ResponseTextDelta,
    ResponseToolCall,
    SpeechStarted,
    SpeechStopped,
    StageError,
    TranscriptFinal,
    TranscriptPartial,
)
from parley.pipeline.history import History, Item
from parley.pipeline.options import ResponseOptions
from parley.pipeline.segmenter import ClauseSegmenter
from parley.pipeline.speech import (
    Recognised,
    RecordingEnd,
    Spoken,
    clauses_of,
    speak,
    speak_text,
    transcribe_recording,
)
from parley.pipeline.timeline import TurnTimeline
from parley.pipeline.turns import SpeechEdge, TurnDetector

__all__ = [
    "ClauseSegmenter",
    "History",
    "InputCommitted",
    "Item",
    "Pipeline",
    "PipelineEvent",
    "PlaybackInterrupted",
    "Recognised",
    "RecordingEnd",
    "ResponseAudio",
    "ResponseDone",
    "ResponseOptions",
    "ResponseStarted",
    "ResponseTextDelta",
    "ResponseToolCall",
    "SpeechEdge",
    "SpeechStarted",
    "SpeechStopped",
    "Spoken",
    "StageError",
    "TranscriptFinal",
    "TranscriptPartial",
    "TurnDetector",
    "TurnTimeline",
    "clauses_of",
    "speak",
    "speak_text",
    "transcribe_recording",
]
