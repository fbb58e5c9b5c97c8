"""The routing policy file (YAML, docs/policy.md): its typed model, and the checker that reads it.

:func:`check_policy` reports every mistake as ``FILE:LINE: message``, the line taken from the
YAML node the mistake is in; :func:`load_policy` raises the first as :class:`PolicyError`. The
model only describes what the file says: choosing a route is :mod:`parley.routing.decide`'s,
building engines :mod:`parley.routing.build`'s, and failing over the pipeline's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml  # type: ignore[import-untyped]  # (no stubs in the dev dependencies)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from parley.errors import ConfigError
from parley.routing.pii import PII_KINDS

__all__ = [
    "PRICE_UNITS",
    "STAGES",
    "Breaker",
    "EngineSpec",
    "Failover",
    "Match",
    "Policy",
    "PolicyError",
    "Route",
    "Stage",
    "Targets",
    "check_policy",
    "load_policy",
    "policy_problems",
]

Stage = Literal["asr", "llm", "tts"]
STAGES: tuple[Stage, ...] = get_args(Stage)
PriceUnit = Literal["input_token", "output_token", "audio_second", "character"]
PRICE_UNITS: tuple[str, ...] = get_args(PriceUnit)
# A path into the policy document, as pydantic writes a location: keys and list indices.
Loc = tuple[str | int, ...]


class PolicyError(ConfigError):
    """A policy file that cannot be used; the message is ``FILE:LINE: message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="policy.file")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(value: Any) -> Any:
    """``tenant: acme`` means ``tenant: [acme]``; ``llm: local-llm`` means ``llm: [local-llm]``."""
    return [value] if isinstance(value, str) else value


class EngineSpec(_Model):
    """A named engine instance: a registry engine of a stage, with its settings.

    Keys other than the fields are the engine's options (``knowledge:`` for faq, ``timeout_s``):
    they land in ``options``, and :func:`parley.routing.build.build_policy_engines` gives each
    to the settings section's field of that name where there is one.
    """

    stage: Stage
    engine: str
    # external: the data leaves the premises (a cloud API); on_prem: it does not.
    location: Literal["on_prem", "external"] = "on_prem"
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _extras_are_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = {k: v for k, v in data.items() if k in cls.model_fields}
        extra = {k: v for k, v in data.items() if k not in cls.model_fields}
        if extra:
            given = known.get("options")
            known["options"] = {**extra, **given} if isinstance(given, dict) else extra
        return known


class Match(_Model):
    """When a route applies: every condition given must hold; none given: always."""

    pii: list[str] | None = None  # any of these PII kinds in the user's text
    tenant: list[str] | None = None  # the caller's tenant is one of these
    key_id: list[str] | None = None  # the caller's API key id is one of these
    language: list[str] | None = None  # the session's language (ISO 639-1) is one of these

    _lists = field_validator("pii", "tenant", "key_id", "language", mode="before")(_as_list)


class Targets(_Model):
    """Engine chains per stage, each in failover order; a stage left out: the configured
    engine of that stage."""

    asr: list[str] | None = None
    llm: list[str] | None = None
    tts: list[str] | None = None

    _lists = field_validator("asr", "llm", "tts", mode="before")(_as_list)

    def chains(self) -> dict[str, tuple[str, ...]]:
        return {stage: tuple(getattr(self, stage) or ()) for stage in STAGES}


class Route(Targets):
    name: str = ""
    when: Match = Field(default_factory=Match)
    # Whether a session that took this route keeps it for the rest of the session. None: yes
    # when the route keys on PII (its history now holds the data), no otherwise.
    sticky: bool | None = None

    @property
    def is_sticky(self) -> bool:
        return bool(self.when.pii) if self.sticky is None else self.sticky


class Breaker(_Model):
    # This many failures in a row open an engine's breaker; it stays open open_s seconds.
    failures: int = Field(3, ge=1)
    open_s: float = Field(30.0, gt=0)


class Failover(_Model):
    # An engine that gives no first token within this time counts as failed for this response.
    first_token_timeout_ms: int = Field(2000, ge=1)
    breaker: Breaker = Field(default_factory=Breaker)


class Policy(_Model):
    engines: dict[str, EngineSpec] = Field(default_factory=dict)
    # USD per unit; a key is an instance of engines, "asr"/"llm"/"tts" (the configured engine
    # of that stage) or a registry engine name.
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)  # first match wins
    default: Targets = Field(default_factory=Targets)
    failover: Failover = Field(default_factory=Failover)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Policy:
        # check_policy collects every problem with its line itself.
        if not (info.context or {}).get("collect"):
            for _, message, _ in policy_problems(self):
                raise ValueError(message)
        return self

    def route(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)


# --- what the checker finds ---------------------------------------------------------------------

# (where, message, whether the message is about the key at ``where`` rather than its value)
Problem = tuple[Loc, str, bool]


def policy_problems(policy: Policy) -> list[Problem]:
    """Every inconsistency the types alone do not catch, in document order."""
    return [*_engine_problems(policy), *_price_problems(policy), *_route_problems(policy)]


def _engine_problems(policy: Policy) -> Iterator[Problem]:
    from parley.engines import registry  # only a check needs the engine names

    for name, spec in policy.engines.items():
        if name in (*STAGES, "default"):
            yield (
                ("engines", name),
                f"engine name {name!r} is reserved (in prices, {name!r} means the configured "
                "engine)",
                True,
            )
        known = registry.names(spec.stage)
        if spec.engine not in known:
            yield (
                ("engines", name, "engine"),
                f"engine {name!r}: {spec.stage} engine {spec.engine!r} is not known; "
                f"known: {', '.join(known)}",
                False,
            )


def _price_problems(policy: Policy) -> Iterator[Problem]:
    from parley.engines import registry

    registered = {n for stage in STAGES for n in registry.names(stage)}
    for key, units in policy.prices.items():
        if key not in policy.engines and key not in STAGES and key not in registered:
            yield (
                ("prices", key),
                f"price for unknown engine {key!r}: not in engines, not asr/llm/tts, not a "
                "registry engine",
                True,
            )
        for unit, price in units.items():
            if unit not in PRICE_UNITS:
                yield (
                    ("prices", key, unit),
                    f"unknown price unit {unit!r}; units: {', '.join(PRICE_UNITS)}",
                    True,
                )
            if price < 0:
                yield (("prices", key, unit), f"negative price {price} for {key!r} {unit}", False)


def _route_problems(policy: Policy) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for i, route in enumerate(policy.routes):
        label = f"route {route.name!r}" if route.name else f"route #{i + 1}"
        if not route.name:
            yield ("routes", i), f"route #{i + 1} has no name", False
        elif route.name == "default":
            yield ("routes", i, "name"), "route name 'default' is reserved", False
        elif route.name in seen:
            yield (
                ("routes", i, "name"),
                f"duplicate route name {route.name!r} (first: route #{seen[route.name] + 1})",
                False,
            )
        else:
            seen[route.name] = i
        for field in ("pii", "tenant", "key_id", "language"):
            values = getattr(route.when, field)
            if values is not None and not values:
                yield ("routes", i, "when", field), f"{label}: empty {field} list", False
        for k, kind in enumerate(route.when.pii or ()):
            if kind not in PII_KINDS:
                yield (
                    ("routes", i, "when", "pii", k),
                    f"{label}: unknown PII kind {kind!r}; known: {', '.join(PII_KINDS)}",
                    False,
                )
        yield from _chain_problems(policy, ("routes", i), label, route)
    yield from _chain_problems(policy, ("default",), "default", policy.default)


_AN = {"asr": "an", "llm": "an", "tts": "a"}


def _chain_problems(policy: Policy, where: Loc, label: str, targets: Targets) -> Iterator[Problem]:
    for stage in STAGES:
        chain = getattr(targets, stage)
        if chain is None:
            continue
        if not chain:
            yield (
                (*where, stage),
                f"{label}: empty {stage} chain (leave {stage} out for the configured engine)",
                False,
            )
        for j, name in enumerate(chain):
            spec = policy.engines.get(name)
            if spec is None:
                yield (
                    (*where, stage, j),
                    f"{label}: {stage} names engine {name!r}, which engines does not define",
                    False,
                )
            elif spec.stage != stage:
                yield (
                    (*where, stage, j),
                    f"{label}: {name!r} is {_AN[spec.stage]} {spec.stage} engine, not {stage}",
                    False,
                )


# --- reading the file ---------------------------------------------------------------------------


def _line(root: Any, loc: Loc, at_key: bool) -> int:
    """The 1-based line of the node at ``loc`` (of its key when ``at_key``), or of the deepest
    node on the way there that exists."""
    node = root
    line: int = node.start_mark.line
    for step in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(step):
                    line = key.start_mark.line if at_key else value.start_mark.line
                    node = value
                    break
            else:
                return line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            if step >= len(node.value):
                return line + 1
            node = node.value[step]
            line = node.start_mark.line
        else:
            return line + 1
    return line + 1


def _duplicate_keys(node: yaml.Node) -> Iterator[tuple[int, str]]:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if key.value in first:
                    yield line, f"duplicate key {key.value!r} (first on line {first[key.value]})"
                else:
                    first[key.value] = line
            yield from _duplicate_keys(value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _duplicate_keys(item)


def _pydantic_message(error: Any) -> tuple[Loc, str, bool]:
    loc: Loc = tuple(error["loc"])
    if loc and loc[-1] == "[key]":
        return loc[:-1], f"{'.'.join(map(str, loc[:-1]))}: bad key: {error['msg']}", True
    where = ".".join(map(str, loc)) or "policy"
    match error["type"]:
        case "extra_forbidden":
            known = ", ".join(_fields_at(loc[:-1]))
            parent = ".".join(map(str, loc[:-1])) or "the policy"
            message = f"unknown key {loc[-1]!r} in {parent}"
            if known:
                message += f"; known: {known}"
            return loc, message, True
        case "missing":
            return loc[:-1], f"{where}: missing", False
        case _:
            return loc, f"{where}: {error['msg']}", False


def _fields_at(loc: Loc) -> list[str]:
    """The keys allowed in the mapping at ``loc`` (for an unknown-key message)."""
    model: type[BaseModel] = Policy
    for step in loc:
        if isinstance(step, int):
            continue
        field = model.model_fields.get(step)
        annotation = field.annotation if field is not None else None
        if model is Policy and step == "routes":
            model = Route
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)


def _source(path: Path) -> tuple[yaml.Node | None, Any, list[str]]:
    """The composed root node and the data of ``path``, or the errors that stop reading it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, None, [f"{path}:1: cannot read the policy: {exc.strerror or exc}"]
    except UnicodeDecodeError as exc:
        return None, None, [f"{path}:1: not UTF-8 text: {exc.reason}"]
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        return None, None, [f"{path}:{line}: invalid YAML: {problem}"]
    except yaml.YAMLError as exc:
        return None, None, [f"{path}:1: invalid YAML: {exc}"]
    finally:
        loader.dispose()
    if root is None:
        return None, None, [f"{path}:1: the policy is empty"]
    if not isinstance(data, dict):
        return (
            None,
            None,
            [
                f"{path}:{root.start_mark.line + 1}: the policy must be a mapping "
                f"({', '.join(Policy.model_fields)})"
            ],
        )
    return root, data, []


def _read(path: Path) -> tuple[Policy | None, list[str]]:
    root, data, errors = _source(path)
    if root is None:
        return None, errors
    errors = [f"{path}:{line}: {message}" for line, message in _duplicate_keys(root)]
    # Unknown top-level keys are reported here, so that the rest is still checked.
    unknown: list[Problem] = [
        ((str(k),), f"unknown key {k!r}; known: {', '.join(Policy.model_fields)}", True)
        for k in data
        if k not in Policy.model_fields
    ]
    known = {k: v for k, v in data.items() if k in Policy.model_fields}
    try:
        policy = Policy.model_validate(known, context={"collect": True})
    except ValidationError as exc:
        found = [_pydantic_message(e) for e in exc.errors()]
        return None, errors + _located(path, root, [*unknown, *found])
    return policy, errors + _located(path, root, [*unknown, *policy_problems(policy)])


def _located(path: Path, root: yaml.Node, problems: Sequence[Problem]) -> list[str]:
    lines = [(_line(root, loc, at_key), message) for loc, message, at_key in problems]
    return [f"{path}:{line}: {message}" for line, message in sorted(lines, key=lambda p: p[0])]


def check_policy(path: Path) -> list[str]:
    """Every error in the policy file at ``path``, each ``FILE:LINE: message``, by line; empty
    when the policy is good."""
    return _read(Path(path))[1]


def load_policy(path: Path) -> Policy:
    """The policy at ``path``; raises :class:`PolicyError` with the first error."""
    policy, errors = _read(Path(path))
    if errors or policy is None:
        raise PolicyError(errors[0] if errors else f"{path}:1: the policy is empty")
    return policy
