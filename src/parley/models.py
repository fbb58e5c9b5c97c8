"""``parley models pull NAME``: fetch real weights for the neural engines, ahead of time.

parley never downloads at run time: the engines load with ``local_files_only`` and a missing
model is a configuration error that names this command. Run it on a machine with internet
(or fill the Hugging Face cache some other way and copy it over); the engines then find the
files where this command put them:

=======================  ===========================================  =========================
NAME                     fetched from                                 engine setting
=======================  ===========================================  =========================
``whisper:SIZE``         faster-whisper's CTranslate2 conversion      ``asr.options.model =
                         (``tiny.en`` ... ``large-v3``, ``turbo``),   "SIZE"``
                         into the Hugging Face cache
``whisper:ORG/REPO``     any CTranslate2 Whisper repository           ``"ORG/REPO"``
``piper:VOICE``          ``rhasspy/piper-voices`` (the ``.onnx`` and  ``tts.options.model =
                         its ``.onnx.json``), into the Piper voices   "VOICE"``
                         folder
``ORG/REPO``             a whole repository (``facebook/mms-tts-eng``  ``tts.options.model =
                         for ``vits``), into the Hugging Face cache   "ORG/REPO"``
=======================  ===========================================  =========================

``--dir`` puts the files in a folder of your choice instead; name that folder in the engine's
``model`` option.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from parley.engines.piper_voices import piper_voices_dir
from parley.errors import ClientError, EngineUnavailableError

__all__ = ["ModelRef", "piper_voices_dir", "pull", "resolve"]

PIPER_REPO = "rhasspy/piper-voices"
_PIPER_VOICE = re.compile(
    r"^(?P<family>[a-z]{2,3})_(?P<region>[A-Z]{2})-(?P<name>[A-Za-z0-9_]+)-"
    r"(?P<quality>x_low|low|medium|high)$"
)
# What faster-whisper itself fetches of a CTranslate2 Whisper repository.
_WHISPER_FILES = [
    "config.json",
    "preprocessor_config.json",
    "model.bin",
    "tokenizer.json",
    "vocabulary.*",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _need(module: str) -> Any:
    """Import a neural extra's module, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ClientError(
            f"{module.split('.')[0]} is not installed: pip install 'parley[neural]' "
            "(see the README's Neural engines)"
        ) from None


@dataclass(frozen=True, slots=True)
class ModelRef:
    """What a NAME means: where it comes from and what to fetch."""

    kind: Literal["whisper", "piper", "repo"]
    repo_id: str
    files: tuple[str, ...] = ()
    """Paths inside the repository; empty for the whole repository."""
    setting: str = ""
    """The engine option value that loads it once pulled."""


def resolve(name: str) -> ModelRef:
    """Parse a NAME; a ClientError says what the accepted forms are."""
    name = name.strip()
    prefix, sep, rest = name.partition(":")
    if sep and prefix == "whisper":
        _MODELS = _need("faster_whisper.utils")._MODELS

        if rest in _MODELS:
            return ModelRef("whisper", _MODELS[rest], setting=rest)
        if _REPO_ID.match(rest):
            return ModelRef("whisper", rest, setting=rest)
        raise ClientError(
            f"unknown Whisper model {rest!r}; known sizes: {', '.join(sorted(_MODELS))}, "
            "or a repository id ORG/NAME"
        )
    if sep and prefix == "piper":
        match = _PIPER_VOICE.match(rest)
        if match is None:
            raise ClientError(
                f"{rest!r} is not a Piper voice name like en_US-lessac-medium "
                "(see https://huggingface.co/rhasspy/piper-voices)"
            )
        folder = "/".join(
            (
                match["family"],
                f"{match['family']}_{match['region']}",
                match["name"],
                match["quality"],
            )
        )
        files = (f"{folder}/{rest}.onnx", f"{folder}/{rest}.onnx.json")
        return ModelRef("piper", PIPER_REPO, files, setting=rest)
    if not sep and _REPO_ID.match(name):
        return ModelRef("repo", name, setting=name)
    raise ClientError(
        f"cannot tell what model {name!r} is; use whisper:SIZE, whisper:ORG/NAME, "
        "piper:VOICE or a Hugging Face repository id ORG/NAME"
    )


def pull(name: str, *, directory: Path | None = None) -> Path:
    """Fetch NAME through the Hugging Face hub client; return where its files are.

    Needs the network. Failures (no network, unknown repository) are EngineUnavailableError
    with the hub's reason.
    """
    ref = resolve(name)
    try:
        hub = _need("huggingface_hub")
        hf_hub_download, snapshot_download = hub.hf_hub_download, hub.snapshot_download

        if ref.kind == "piper":
            target = directory or piper_voices_dir()
            target.mkdir(parents=True, exist_ok=True)
            for file in ref.files:
                cached = Path(hf_hub_download(ref.repo_id, file))
                (target / Path(file).name).write_bytes(cached.read_bytes())
            return target / Path(ref.files[0]).name
        path = snapshot_download(
            ref.repo_id,
            local_dir=None if directory is None else str(directory),
            allow_patterns=_WHISPER_FILES if ref.kind == "whisper" else None,
        )
        return Path(path)
    except ClientError:
        raise
    except Exception as exc:
        raise EngineUnavailableError(
            f"could not fetch {name!r} from the Hugging Face hub: {type(exc).__name__}: {exc}"
        ) from exc
