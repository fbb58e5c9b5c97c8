"""The shared speech clips (``../shared/speech`` beside the project) and their manifest."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from parley.errors import ConfigError

__all__ = ["Clip", "default_clips", "load_clips"]


def default_clips() -> Path:
    """``$PARLEY_CLIPS``, else ``../shared/speech`` from the working directory, else from the
    source checkout (an editable install)."""
    if env := os.environ.get("PARLEY_CLIPS"):
        return Path(env)
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = root.parent / "shared" / "speech"
        if (candidate / "manifest.jsonl").is_file():
            return candidate
    return Path.cwd().parent / "shared" / "speech"


@dataclass(frozen=True, slots=True)
class Clip:
    id: str
    path: Path
    language: str
    duration_s: float
    transcript: str


def load_clips(folder: Path | None = None, *, language: str | None = "en") -> list[Clip]:
    """Clips listed in ``folder/manifest.jsonl``, optionally of one language."""
    folder = folder or default_clips()
    manifest = folder / "manifest.jsonl"
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read clip manifest {manifest}: {exc.strerror}") from exc
    clips = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            clip = Clip(
                row["id"],
                folder / row["file"],
                row["language"],
                float(row["duration_s"]),
                row["transcript"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{manifest}:{n}: not a clip entry ({exc})") from exc
        if language is None or clip.language == language:
            clips.append(clip)
    return clips
