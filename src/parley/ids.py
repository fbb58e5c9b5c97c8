"""Identifiers: OpenAI-style ids for items, responses, sessions and events.

A leaf module (imports nothing of parley) so that any layer can name things without importing
the layer above it.
"""

from __future__ import annotations

import secrets

__all__ = ["new_event_id", "new_id"]

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str) -> str:
    """``prefix`` + ``_`` + 22 random base62 characters (128 bits), like OpenAI's ids."""
    n = secrets.randbits(128)
    chars = []
    for _ in range(22):
        n, r = divmod(n, 62)
        chars.append(_ALPHABET[r])
    return f"{prefix}_{''.join(chars)}"


def new_event_id() -> str:
    """A fresh server event id: ``event_...``."""
    return new_id("event")
