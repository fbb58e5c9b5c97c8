"""Pydantic validation failures of client events, worded as OpenAI words them.

A strict model's error names union branches and internal labels; the client only knows its own
JSON. :func:`protocol_error` walks the client's data alongside pydantic's error location to
name the field as the client sent it (``session.audio.input.turn_detection.threshold``), picks
the error of the branch the client came closest to, and says what was expected in one line
(never echoing a 15 MiB value back).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from parley.errors import Code, ProtocolError, dotted_param

__all__ = ["kind_of", "protocol_error", "show"]


_TYPE_ERRORS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def kind_of(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
        case _:
            return type(value).__name__


def show(value: object) -> str:
    """A short JSON rendering of a client's value, never a 15 MiB echo."""
    text = f"'{value[:61]}'" if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _path(loc: Sequence[int | str], data: object, *, missing: bool) -> list[int | str]:
    """A pydantic error location cut to the client's own keys and indexes.

    Union branches add labels (a tag such as ``server_vad``, or ``int``) that name no field of
    the input; walking the input alongside drops them. With ``missing`` the last segment is a
    key the client left out.
    """
    path: list[int | str] = []
    node = data
    last = len(loc) - 1
    for i, seg in enumerate(loc):
        if isinstance(seg, str) and isinstance(node, Mapping):
            if seg in node:
                node = node[seg]
            elif missing and i == last:
                node = None
            else:
                continue
        elif isinstance(seg, int) and isinstance(node, list) and 0 <= seg < len(node):
            node = node[seg]
        else:
            continue
        path.append(seg)
    return path


def protocol_error(exc: ValidationError, data: object, event_id: str | None) -> ProtocolError:
    errors = exc.errors(include_url=False, include_context=True)
    located = [(_path(e["loc"], data, missing=e["type"] == "missing"), e) for e in errors]
    # Of a union's branch errors, the deepest is the one the client was closest to.
    deepest = max(len(p) for p, _ in located)
    path, first = next((p, e) for p, e in located if len(p) == deepest)
    same = [e for p, e in located if p == path]
    param = dotted_param(path)
    ctx = first.get("ctx") or {}

    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        field = str(ctx.get("discriminator", "type")).strip("'")
        param = dotted_param([*path, field])
        if first["type"] == "union_tag_not_found":
            return ProtocolError(
                f"Missing required parameter: '{param}'.",
                code=Code.MISSING_REQUIRED_PARAMETER,
                param=param,
                event_id=event_id,
            )
        return ProtocolError(
            f"Invalid value: {show(ctx.get('tag'))}. Supported values are: "
            f"{ctx.get('expected_tags')}.",
            code=Code.INVALID_VALUE,
            param=param,
            event_id=event_id,
        )
    if any(e["type"] == "missing" for e in same):
        return ProtocolError(
            f"Missing required parameter: '{param}'.",
            code=Code.MISSING_REQUIRED_PARAMETER,
            param=param,
            event_id=event_id,
        )
    expected: list[str] = []
    for e in same:
        want = _TYPE_ERRORS.get(e["type"])
        if want is None:
            want = str(e["msg"]).removeprefix("Value error, ").removeprefix("Input should be ")
        if want not in expected:
            expected.append(want)
    alternatives = " or ".join(expected)
    value = first["input"]
    if all(e["type"] in _TYPE_ERRORS for e in same):
        return ProtocolError(
            f"Invalid type for '{param}': expected {alternatives}, "
            f"but got {kind_of(value)} instead.",
            code=Code.INVALID_TYPE,
            param=param,
            event_id=event_id,
        )
    return ProtocolError(
        f"Invalid value for '{param}': {show(value)}; expected {alternatives}.",
        code=Code.INVALID_VALUE,
        param=param,
        event_id=event_id,
    )
