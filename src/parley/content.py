"""Message content parts: plain data that every layer passes around (a leaf module).

Prompt templates in the store, the pipeline's history and the engines' chat requests all carry
text and images; keeping the parts here lets the store name them without importing the engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ContentPart", "ImagePart", "TextPart"]


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image as a URL; parley passes ``data:`` URLs for images sent over the wire."""

    url: str
    detail: Literal["auto", "low", "high"] = "auto"


ContentPart = TextPart | ImagePart
