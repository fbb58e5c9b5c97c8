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
    "ResponseAudio",
    "ResponseDone",
    "ResponseOptions",
    "ResponseStarted",
    "ResponseTextDelta",
    "ResponseToolCall",
    "SpeechEdge",
    "SpeechStarted",
    "SpeechStopped",
    "StageError",
    "TranscriptFinal",
    "TranscriptPartial",
    "TurnDetector",
    "TurnTimeline",
]
