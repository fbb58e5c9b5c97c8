"""Reusable, versioned prompt templates: stored, loaded from TOML files, rendered.

The Realtime API lets ``session.update`` and ``response.create`` name a stored prompt,
``prompt: {id, version?, variables?}``. A :class:`PromptTemplate` holds instructions with
``{{variable}}`` placeholders; :class:`PromptStore` keeps its versions in the
:class:`~parley.store.database.Database`; :func:`render` fills the placeholders with the request's
variables (strings, ``input_text`` parts or ``input_image`` parts) and the template's defaults.

Rendering is plain substitution in one pass: a placeholder is ``{{name}}`` (spaces inside the
braces allowed) naming a declared variable, and nothing else in the text is touched, so JSON or
code in the instructions comes out as written and a value that itself contains ``{{...}}`` is
never expanded again. There are no expressions, filters, conditionals or includes, and there
must never be: template text comes from callers and must not be able to run anything.

Faults of the caller (unknown prompt, missing or unknown variable, a value of the wrong type)
raise :class:`~parley.errors.ClientError` with ``code="invalid_prompt"`` and the ``param`` it
concerns; a bad template file raises :class:`~parley.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import builtins
import json
import re
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

from parley.content import ImagePart, TextPart
from parley.errors import ClientError, Code, ConfigError
from parley.store.database import Database

__all__ = [
    "PromptStore",
    "PromptTemplate",
    "PromptVariable",
    "RenderedPrompt",
    "load_template_file",
    "render",
]

INVALID_PROMPT = Code.INVALID_PROMPT
VERSION_EXISTS = Code.PROMPT_VERSION_EXISTS

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_VARIABLE_NAME = r"[A-Za-z_][A-Za-z0-9_-]{0,63}"
_VARIABLE = re.compile(_VARIABLE_NAME)
_PLACEHOLDER = re.compile(r"\{\{\s*(" + _VARIABLE_NAME + r")\s*\}\}")
_NUMERIC = re.compile(r"[0-9]{1,18}")
_DETAILS = ("auto", "low", "high")
_FILE_KEYS = frozenset({"id", "version", "description", "instructions", "variables"})

# Builds the error to raise: a ClientError for a request, a ConfigError for a template file.
_Fault = Callable[[str, str], ClientError]


@dataclass(frozen=True, slots=True)
class PromptVariable:
    """A declared variable; ``default`` None means the caller must supply it."""

    name: str
    default: str | ImagePart | None = None


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """One version of a stored prompt.

    Every ``{{name}}`` in ``instructions`` must be declared in ``variables``; a variable may also
    be declared without appearing in the text (an image attached as it is). ``created_at`` is
    unix seconds, set by :meth:`PromptStore.put` when it is None.
    """

    id: str
    version: str
    instructions: str
    variables: tuple[PromptVariable, ...] = ()
    description: str = ""
    created_at: float | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.id):
            raise _invalid(f"prompt id {self.id!r} must match [A-Za-z0-9_.-]{{1,64}}", "prompt.id")
        if not _NAME.fullmatch(self.version):
            raise _invalid(
                f"prompt version {self.version!r} must match [A-Za-z0-9_.-]{{1,64}}",
                "prompt.version",
            )
        seen: set[str] = set()
        for var in self.variables:
            if not _VARIABLE.fullmatch(var.name):
                raise _invalid(
                    f"prompt variable name {var.name!r} must match [A-Za-z_][A-Za-z0-9_-]{{0,63}}",
                    "prompt.variables",
                )
            if var.name in seen:
                raise _invalid(
                    f"prompt variable {var.name!r} is declared twice", "prompt.variables"
                )
            seen.add(var.name)
        undeclared = [name for name in self.placeholders if name not in seen]
        if undeclared:
            raise _invalid(
                f"prompt {self.id} uses {{{{{undeclared[0]}}}}} but does not declare it",
                "prompt.variables",
            )

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The variable names the instructions use, in order of first use."""
        return tuple(dict.fromkeys(_PLACEHOLDER.findall(self.instructions)))

    def same_content(self, other: PromptTemplate) -> bool:
        """Equal in everything but ``created_at``."""
        return replace(self, created_at=None) == replace(other, created_at=None)


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """Instructions with every placeholder filled, and the images the variables supplied."""

    instructions: str
    images: tuple[ImagePart, ...] = ()


# --- rendering -------------------------------------------------------------------------------


def render(
    template: PromptTemplate, variables: Mapping[str, object] | None = None
) -> RenderedPrompt:
    """Fill ``template``'s placeholders from ``variables``, falling back to its defaults.

    A value is a string, an ``{"type": "input_text", "text": ...}`` part or an
    ``{"type": "input_image", "image_url": ..., "detail": ...}`` part (or the equivalent
    :class:`TextPart` / :class:`ImagePart`). An image fills its placeholder with
    ``[image: name]`` and is returned in ``images``, in the order the text first uses them,
    then images of variables the text does not mention, in declaration order.
    """
    given = variables or {}
    declared = {var.name: var for var in template.variables}
    for name in given:
        if name not in declared:
            takes = ", ".join(declared) or "no variables"
            raise _invalid(
                f"prompt {template.id} has no variable {name!r} (it takes: {takes})",
                f"prompt.variables.{name}",
            )
    values: dict[str, str | ImagePart] = {}
    for var in template.variables:
        if var.name in given:
            values[var.name] = _parse_value(var.name, given[var.name])
        elif var.default is not None:
            values[var.name] = var.default
        else:
            raise _invalid(
                f"prompt {template.id} needs variable {var.name!r}, which has no default",
                f"prompt.variables.{var.name}",
            )

    images: dict[str, ImagePart] = {}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        value = values[name]
        if isinstance(value, ImagePart):
            images.setdefault(name, value)
            return f"[image: {name}]"
        return value

    text = _PLACEHOLDER.sub(fill, template.instructions)
    for name, value in values.items():
        if isinstance(value, ImagePart):
            images.setdefault(name, value)
    return RenderedPrompt(text, tuple(images.values()))


def _parse_value(name: str, value: object) -> str | ImagePart:
    param = f"prompt.variables.{name}"
    match value:
        case str():
            return value
        case TextPart(text=text):
            return text
        case ImagePart():
            return value
        case Mapping():
            part = cast(Mapping[str, object], value)
            kind = part.get("type")
            if kind == "input_text":
                body = part.get("text")
                if not isinstance(body, str):
                    raise _invalid(
                        f"prompt variable {name!r}: input_text needs a text string", param
                    )
                return body
            if kind == "input_image":
                return _image(part, f"prompt variable {name!r}", param, _invalid)
            raise _invalid(
                f"prompt variable {name!r}: parts of type {kind!r} are not supported "
                "(use a string, input_text or input_image)",
                param,
            )
    raise _invalid(
        f"prompt variable {name!r} must be a string or an input_text or input_image part, "
        f"not {type(value).__name__}",
        param,
    )


def _image(part: Mapping[str, object], where: str, param: str, error: _Fault) -> ImagePart:
    url = part.get("image_url")
    if part.get("file_id") is not None and url is None:
        raise error(f"{where}: images by file_id are not supported; send an image_url", param)
    if not isinstance(url, str) or not url:
        raise error(f"{where}: input_image needs an image_url string", param)
    detail = part.get("detail", "auto")
    if detail is None:
        detail = "auto"
    if detail not in _DETAILS:
        raise error(f"{where}: detail must be one of auto, low, high, not {detail!r}", param)
    return ImagePart(url, cast(Literal["auto", "low", "high"], detail))


def _invalid(message: str, param: str) -> ClientError:
    """A caller's fault with a prompt, in the Realtime error shape."""
    return ClientError(message, param=param, code=INVALID_PROMPT)


# --- template files --------------------------------------------------------------------------


def load_template_file(path: Path | str) -> PromptTemplate:
    """Read a template from a TOML file.

    Keys: ``id`` (required), ``version`` (default ``"1"``), ``description``, ``instructions``
    (required) and a ``[variables]`` table mapping each name to its default: a string, an
    ``{type = "input_text", text = ...}`` or ``{type = "input_image", image_url = ...,
    detail = ...}`` table, or a part without its text or URL (``{type = "input_text"}``) for a
    variable the caller must supply. A placeholder not listed in ``[variables]`` is declared
    without a default.
    """
    try:
        tree = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read prompt file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"prompt file {path} is not valid TOML: {exc}") from exc

    def bad(message: str, param: str | None = None) -> ConfigError:
        return ConfigError(f"prompt file {path}: {message}", param=param)

    unknown = sorted(set(tree) - _FILE_KEYS)
    if unknown:
        raise bad(f"unknown key {unknown[0]!r} (expected {', '.join(sorted(_FILE_KEYS))})")
    for key in ("id", "instructions"):
        if key not in tree:
            raise bad(f"missing key {key!r}")
    for key in ("id", "version", "description", "instructions"):
        if key in tree and not isinstance(tree[key], str):
            raise bad(f"{key} must be a string")
    table = tree.get("variables", {})
    if not isinstance(table, dict):
        raise bad("variables must be a table of name = default")

    declared: builtins.list[PromptVariable] = []
    for name, raw in table.items():
        declared.append(PromptVariable(name, _file_default(name, raw, bad)))
    try:
        names = {var.name for var in declared}
        implicit = [
            PromptVariable(name)
            for name in dict.fromkeys(_PLACEHOLDER.findall(tree["instructions"]))
            if name not in names
        ]
        return PromptTemplate(
            id=tree["id"],
            version=tree.get("version", "1"),
            instructions=tree["instructions"],
            variables=(*implicit, *declared),
            description=tree.get("description", ""),
        )
    except ClientError as exc:
        raise bad(exc.message) from exc


def _file_default(name: str, raw: object, bad: _Fault) -> str | ImagePart | None:
    where = f"variable {name!r}"
    param = f"variables.{name}"
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, dict):
        raise bad(
            f"{where}: a default must be a string or an input_text or input_image table", param
        )
    kind = raw.get("type")
    if kind == "input_text":
        extra = sorted(set(raw) - {"type", "text"})
        if extra:
            raise bad(f"{where}: unknown key {extra[0]!r}", param)
        text = raw.get("text")
        if text is not None and not isinstance(text, str):
            raise bad(f"{where}: text must be a string", param)
        return text
    if kind == "input_image":
        extra = sorted(set(raw) - {"type", "image_url", "detail"})
        if extra:
            raise bad(f"{where}: unknown key {extra[0]!r}", param)
        if "image_url" not in raw:
            return None
        return _image(raw, where, param, bad)
    raise bad(f"{where}: type must be input_text or input_image, not {kind!r}", param)


# --- the store -------------------------------------------------------------------------------


class PromptStore:
    """The prompt templates in ``db``, each id with any number of immutable versions.

    "Latest" is the highest version when all of an id's versions are numbers, else the one put
    most recently.
    """

    def __init__(self, db: Database, tenant: str = "") -> None:
        self._db = db
        # Every query is scoped to this tenant: one tenant never sees another's templates.
        self.tenant = tenant

    def put(self, template: PromptTemplate) -> PromptTemplate:
        """Store a new version; return it with ``created_at`` set.

        Putting a version that exists again is a no-op when its content is the same and a
        :class:`ClientError` (``prompt_version_exists``) when it differs: versions never change.
        """
        with self._db.transaction():
            rows = self._db.query(
                "SELECT * FROM prompt_templates"
                " WHERE tenant = :tenant AND id = :id AND version = :version",
                {"tenant": self.tenant, "id": template.id, "version": template.version},
            )
            if rows:
                existing = _from_row(rows[0])
                if existing.same_content(template):
                    return existing
                raise ClientError(
                    f"prompt {template.id} version {template.version} exists with different "
                    "content; versions cannot be changed, put a new version",
                    param="prompt.version",
                    code=VERSION_EXISTS,
                )
            stored = template
            if stored.created_at is None:
                stored = replace(template, created_at=time.time())
            self._db.execute(
                "INSERT INTO prompt_templates"
                " (tenant, id, version, description, instructions, variables, created_at)"
                " VALUES (:tenant, :id, :version, :description, :instructions, :variables,"
                " :created_at)",
                {
                    "tenant": self.tenant,
                    "id": stored.id,
                    "version": stored.version,
                    "description": stored.description,
                    "instructions": stored.instructions,
                    "variables": _dump_variables(stored.variables),
                    "created_at": stored.created_at,
                },
            )
        return stored

    def get(self, id: str, version: str | None = None) -> PromptTemplate:
        """The given version of prompt ``id``, or its latest when ``version`` is None."""
        if version is None:
            return _latest(self.versions(id))
        rows = self._db.query(
            "SELECT * FROM prompt_templates"
            " WHERE tenant = :tenant AND id = :id AND version = :version",
            {"tenant": self.tenant, "id": id, "version": version},
        )
        if not rows:
            self.versions(id)  # raises when the id itself is unknown
            raise _invalid(f"prompt {id} has no version {version!r}", "prompt.version")
        return _from_row(rows[0])

    def versions(self, id: str) -> builtins.list[PromptTemplate]:
        """Every version of prompt ``id``, oldest first."""
        rows = self._db.query(
            "SELECT * FROM prompt_templates WHERE tenant = :tenant AND id = :id ORDER BY seq",
            {"tenant": self.tenant, "id": id},
        )
        if not rows:
            raise _invalid(f"unknown prompt {id!r}", "prompt.id")
        return [_from_row(row) for row in rows]

    def list(self) -> builtins.list[PromptTemplate]:
        """The latest version of every prompt, by id."""
        by_id: dict[str, builtins.list[PromptTemplate]] = {}
        for row in self._db.query(
            "SELECT * FROM prompt_templates WHERE tenant = :tenant ORDER BY id, seq",
            {"tenant": self.tenant},
        ):
            template = _from_row(row)
            by_id.setdefault(template.id, []).append(template)
        return [_latest(versions) for versions in by_id.values()]

    def delete(self, id: str, version: str | None = None) -> None:
        """Delete one version of prompt ``id``, or all of them when ``version`` is None."""
        if version is None:
            changed = self._db.execute(
                "DELETE FROM prompt_templates WHERE tenant = :tenant AND id = :id",
                {"tenant": self.tenant, "id": id},
            )
            if not changed:
                raise _invalid(f"unknown prompt {id!r}", "prompt.id")
            return
        with self._db.transaction():
            changed = self._db.execute(
                "DELETE FROM prompt_templates"
                " WHERE tenant = :tenant AND id = :id AND version = :version",
                {"tenant": self.tenant, "id": id, "version": version},
            )
            if not changed:
                self.versions(id)
                raise _invalid(f"prompt {id} has no version {version!r}", "prompt.version")


def _latest(versions: builtins.list[PromptTemplate]) -> PromptTemplate:
    if all(_NUMERIC.fullmatch(t.version) for t in versions):
        return max(versions, key=lambda t: int(t.version))
    return versions[-1]


def _dump_variables(variables: tuple[PromptVariable, ...]) -> str:
    out: builtins.list[dict[str, object]] = []
    for var in variables:
        default: object = var.default
        if isinstance(var.default, ImagePart):
            default = {
                "type": "input_image",
                "image_url": var.default.url,
                "detail": var.default.detail,
            }
        out.append({"name": var.name, "default": default})
    return json.dumps(out, separators=(",", ":"))


def _load_variables(text: str) -> tuple[PromptVariable, ...]:
    out: builtins.list[PromptVariable] = []
    for item in json.loads(text):
        default = item["default"]
        if isinstance(default, dict):
            default = ImagePart(default["image_url"], default["detail"])
        out.append(PromptVariable(item["name"], default))
    return tuple(out)


def _from_row(row: Any) -> PromptTemplate:
    return PromptTemplate(
        id=row["id"],
        version=row["version"],
        instructions=row["instructions"],
        variables=_load_variables(row["variables"]),
        description=row["description"],
        created_at=row["created_at"],
    )
