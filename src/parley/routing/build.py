"""Building the engine instances a policy names, through the engine registry.

Each instance's settings are the configured section of its stage (``[llm]``, ...) with the
instance's fields laid over a copy: its engine, model, base URL, key, and each option that is a
field of the section (``knowledge``, ``timeout_s``, ``voice``); the other options are the
engine's own. The engine modules are imported only when an instance needs them, as the registry
does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from parley.config import Settings
from parley.errors import ConfigError
from parley.routing.policy import EngineSpec, Policy

__all__ = ["build_policy_engines", "instance_settings"]


def _engine_of(section: Any) -> str:
    return str(getattr(section, "resolved_engine", section.engine))


def instance_settings(name: str, spec: EngineSpec, section: BaseModel) -> BaseModel:
    """The settings section ``spec`` builds with: ``section`` with the spec laid over it.

    The section's options go along only where the instance is the same engine (another engine
    would not take them), and its API key only where the base URL stays the same (a key is
    never sent to a server it was not meant for).
    """
    fields = type(section).model_fields
    same_engine = _engine_of(section) == spec.engine
    options: dict[str, Any] = dict(getattr(section, "options", {})) if same_engine else {}
    update: dict[str, Any] = {"engine": spec.engine}
    if (
        "api_key" in fields
        and spec.base_url is not None
        and spec.base_url != getattr(section, "base_url", None)
    ):
        update["api_key"] = None
    given = {
        "model": spec.model,
        "base_url": spec.base_url,
        "api_key": spec.api_key,
        **spec.options,
    }
    for key, value in given.items():
        if value is None and key in ("model", "base_url", "api_key"):
            continue
        if key in fields and key not in ("engine", "options"):
            update[key] = value
        else:
            options[key] = value
    update["options"] = options
    try:
        return type(section).model_validate({**section.model_dump(), **update})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"policy engine {name!r}: {where}: {first['msg']}", param="policy.file"
        ) from exc


def build_policy_engines(policy: Policy, settings: Settings) -> dict[str, object]:
    """Every engine instance of ``policy``, by name, built as ``settings`` configures its stage.

    Raises :class:`ConfigError` naming the instance when one cannot be built.
    """
    from parley.engines import registry

    builders = {"asr": registry.build_asr, "llm": registry.build_llm, "tts": registry.build_tts}
    built: dict[str, object] = {}
    for name, spec in policy.engines.items():
        section = instance_settings(name, spec, getattr(settings, spec.stage))
        try:
            built[name] = builders[spec.stage](section)  # type: ignore[operator]
        except ConfigError as exc:
            raise ConfigError(
                f"policy engine {name!r}: {exc.message}", param="policy.file"
            ) from exc
    return built
