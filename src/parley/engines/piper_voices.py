"""Where Piper voices live on this machine (a leaf module: the engine and ``parley models pull``
both need it, and the engine must not import the command that fetches models)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["piper_voices_dir"]


def piper_voices_dir() -> Path:
    """Where ``parley models pull piper:VOICE`` puts voices and the ``piper`` engine looks."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "parley" / "piper"
