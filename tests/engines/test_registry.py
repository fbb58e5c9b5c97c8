import pytest

from parley.config import load_settings
from parley.engines.registry import build_engines, build_llm, build_tts, names
from parley.errors import ConfigError


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("silero", "whisper", "faq", "piper")),
        ({"PARLEY_PROFILE": "neural"}, ("silero", "whisper", "faq", "piper")),
        ({"PARLEY_PROFILE": "fast"}, ("silero", "pocketsphinx", "faq", "espeak")),
        # A section that names its engine keeps it, whatever the profile.
        (
            {"PARLEY_PROFILE": "fast", "PARLEY_TTS_ENGINE": "piper"},
            ("silero", "pocketsphinx", "faq", "piper"),
        ),
    ],
)
def test_registry_builds_the_profile_engines(
    env: dict[str, str], expected: tuple[str, ...]
) -> None:
    engines = build_engines(load_settings(env=env))
    assert (engines.vad.name, engines.asr.name, engines.llm.name, engines.tts.name) == expected


def test_registry_picks_openai_when_base_url_is_set() -> None:
    settings = load_settings(env={"PARLEY_LLM_BASE_URL": "http://127.0.0.1:9/v1"})
    assert build_llm(settings.llm).name == "openai"


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"tts.engine": "nonesuch"}, "tts.engine"),
        ({"tts.options": '{"no_such_option": 1}'}, "tts.options"),
        ({"llm.engine": "openai"}, "llm.base_url"),
    ],
)
def test_registry_config_errors_are_clear(overrides: dict[str, str], param: str) -> None:
    settings = load_settings(env={}, overrides=overrides)
    with pytest.raises(ConfigError) as err:
        build_tts(settings.tts) if param.startswith("tts") else build_llm(settings.llm)
    assert err.value.param == param
    assert "\n" not in err.value.message


def test_registry_lists_engine_names() -> None:
    assert names("llm") == ["faq", "openai"]
