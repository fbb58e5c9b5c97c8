"""Engine Protocols, the embedded engines and the registry that builds them from config."""

from parley.engines.base import (
    ASR,
    LLM,
    TTS,
    VAD,
    ChatRequest,
    ContentPart,
    Finish,
    ImagePart,
    LLMEvent,
    Message,
    SpeechOptions,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Transcript,
    Usage,
    VADStream,
    Voice,
    Word,
)
from parley.engines.registry import Engines, build_engines, register

__all__ = [
    "ASR", "LLM", "TTS", "VAD", "ChatRequest", "ContentPart", "Engines", "Finish", "ImagePart",
    "LLMEvent", "Message", "SpeechOptions", "TextDelta", "TextPart", "ToolCall", "ToolCallDelta",
    "ToolSpec", "Transcript", "Usage", "VADStream", "Voice", "Word", "build_engines", "register",
]
