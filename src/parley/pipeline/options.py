"""How a response is to be made: the options a protocol layer passes to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from parley.engines.base import ContentPart, ToolSpec

__all__ = ["ResponseOptions"]


@dataclass(frozen=True, slots=True)
class ResponseOptions:
    """How to answer; ``None`` fields fall back to the pipeline's settings."""

    # Text, or parts (text and images) when a prompt template carries images.
    instructions: str | tuple[ContentPart, ...] | None = None
    audio: bool = True
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"
    max_output_tokens: int | None = None
    temperature: float | None = None
    voice: str | None = None
    speed: float | None = None
