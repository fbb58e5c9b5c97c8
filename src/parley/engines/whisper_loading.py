"""Loading a faster-whisper (CTranslate2) Whisper model from a folder or the Hugging Face cache."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from parley.engines.device import Placement
from parley.errors import ConfigError, EngineUnavailableError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PARAM = "asr.options"


def _pull_hint(name: str) -> str:
    return f"run `parley models pull whisper:{name}` on a machine with internet"


def resolve(model: str, *, download_root: str | None, allow_download: bool) -> Path:
    """The folder holding ``model``: itself, or its snapshot in the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from faster_whisper.utils import available_models, download_model

    param = f"{_PARAM}.model"
    if path.exists() or not (model in available_models() or _REPO_ID.match(model)):
        raise ConfigError(
            f"no Whisper model folder at {path}: asr.options.model is a folder holding a "
            f"CTranslate2 Whisper conversion, a size ({', '.join(available_models())}) "
            "or a hub repository id such as Systran/faster-whisper-small",
            param=param,
        )
    try:
        return Path(
            download_model(model, local_files_only=not allow_download, cache_dir=download_root)
        )
    except Exception as exc:  # huggingface_hub's errors for a missing file or a failed fetch
        reason = " ".join(str(exc).split())[:300]
        if not allow_download:
            raise ConfigError(
                f"Whisper model {model!r} is neither a folder nor in the Hugging Face cache: "
                f"{_pull_hint(model)} (and copy the cache over), or set asr.options.model to "
                "a model folder",
                param=param,
            ) from exc
        raise EngineUnavailableError(
            f"could not fetch Whisper model {model!r}: {type(exc).__name__}: {reason}"
        ) from exc


def load(path: Path, placement: Placement, cpu_threads: int) -> Any:
    """faster-whisper's WhisperModel for the folder ``path``; ConfigError when it cannot be."""
    param = f"{_PARAM}.model"
    missing = [name for name in ("model.bin", "config.json") if not (path / name).is_file()]
    if not any(path.glob("vocabulary.*")):
        missing.append("vocabulary.*")
    if missing:
        raise ConfigError(
            f"{path} is not a CTranslate2 Whisper model: it has no {', '.join(missing)}",
            param=param,
        )
    if not (path / "tokenizer.json").is_file():
        # faster-whisper would download openai/whisper-tiny's tokenizer at run time instead.
        raise ConfigError(
            f"{path} has no tokenizer.json: copy the one of the model it was converted from "
            "(the Hugging Face repository's tokenizer.json) into it",
            param=param,
        )
    from faster_whisper import WhisperModel

    try:
        model = WhisperModel(
            str(path),
            device=placement.kind,
            device_index=placement.index,
            compute_type=placement.dtype,
            cpu_threads=cpu_threads,
            local_files_only=True,
        )
    except Exception as exc:  # CTranslate2 and tokenizers raise plain RuntimeError/Exception
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"could not load the Whisper model in {path}: {type(exc).__name__}: {reason}",
            param=param,
        ) from exc
    tokenizer = model.hf_tokenizer
    needed = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    if model.model.is_multilingual:
        needed += ["<|transcribe|>", "<|en|>"]
    absent = [t for t in needed if tokenizer.token_to_id(t) is None]
    if absent:
        raise ConfigError(
            f"the tokenizer.json in {path} is not Whisper's: it lacks {', '.join(absent)}",
            param=param,
        )
    mels = int(model.feature_extractor.mel_filters.shape[0])
    if mels != int(model.model.n_mels):
        raise ConfigError(
            f"the Whisper model in {path} takes {model.model.n_mels} mel bands but its "
            f"preprocessor_config.json gives {mels}: copy the preprocessor_config.json of the "
            "model it was converted from into it",
            param=param,
        )
    return model
