"""Structured logs: one JSON object per line for the ``parley`` logger hierarchy.

Each line has ``ts`` (ISO 8601, UTC), ``level``, ``logger`` and ``msg``, then the ids of the
context it was logged in (``session_id``, ``turn_id``, ``response_id``), then any ``extra=``
fields; an exception adds ``exc_type``, ``exc_message`` and ``traceback`` (a string).

The ids travel in a :class:`~contextvars.ContextVar`: :func:`log_context` sets them for a block,
:func:`bind` for the rest of the current task. asyncio copies the context into every task it
creates, so binding ``session_id`` before a connection starts its tasks tags every line those
tasks log. This module formats and routes records; it never decides what is worth logging.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json as jsonlib
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TextIO

from parley.errors import ConfigError

if TYPE_CHECKING:
    from parley.pipeline.events import ResponseDone

__all__ = [
    "JSONFormatter",
    "bind",
    "configure_logging",
    "current_context",
    "log_context",
    "turn_fields",
]

ROOT_LOGGER = "parley"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "parley_log_context", default=_EMPTY
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def current_context() -> Mapping[str, str]:
    """The ids bound in the current context."""
    return _context.get()


def _merged(ids: Mapping[str, str | None]) -> Mapping[str, str]:
    merged = dict(_context.get())
    for key, value in ids.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return MappingProxyType(merged)


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Add ``ids`` to every line logged inside the block (a None value removes an id)."""
    token = _context.set(_merged(ids))
    try:
        yield
    finally:
        _context.reset(token)


def bind(**ids: str | None) -> None:
    """Add ``ids`` to every line logged from here to the end of the current task.

    Meant for the top of a task that owns the ids (a connection's handler); a task's context is
    its own copy, so nothing leaks into other tasks.
    """
    _context.set(_merged(ids))


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_context.get())
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in out:
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            out["exc_type"] = exc_type.__qualname__
            out["exc_message"] = str(exc)
            out["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))
        if record.stack_info:
            out["stack"] = record.stack_info
        return jsonlib.dumps(out, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the context ids at the end."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{k}={v}" for k, v in _context.get().items())
        if not ids:
            return line
        first, sep, rest = line.partition("\n")
        return f"{first} [{ids}]{sep}{rest}"


class _ParleyHandler(logging.StreamHandler[TextIO]):
    """Marks the handler :func:`configure_logging` installed, so a second call replaces it."""


def configure_logging(level: str, *, json: bool = True, stream: TextIO | None = None) -> None:
    """Send the ``parley`` loggers' records at ``level`` and above to ``stream`` (stderr).

    Raises :class:`ConfigError` for a level that is not one of DEBUG, INFO, WARNING, ERROR,
    CRITICAL (any case). Calling it again replaces the previous configuration.
    """
    name = level.strip().upper()
    if name not in _LEVELS:
        raise ConfigError(
            f"setting log_level: unknown level {level!r}; use one of {', '.join(_LEVELS)}",
            param="log_level",
        )
    logger = logging.getLogger(ROOT_LOGGER)
    for old in [h for h in logger.handlers if isinstance(h, _ParleyHandler)]:
        logger.removeHandler(old)
        old.close()
    handler = _ParleyHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JSONFormatter() if json else _TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(name)
    # The lines are complete here; a root handler (if any) would print them a second time.
    logger.propagate = False


def turn_fields(done: ResponseDone) -> dict[str, Any]:
    """The ``extra=`` fields of the per-turn log line: outcome, latencies and usage."""
    timeline = done.timeline
    fields: dict[str, Any] = {
        "status": done.status,
        "reason": done.reason,
        "audio_ms": round(done.audio_ms, 1),
        "stages_ms": {k: round(v, 1) for k, v in timeline.stages().items()},
        "response_latency_ms": _round(timeline.response_latency_ms),
        "turn_gap_ms": _round(timeline.turn_gap_ms),
    }
    if done.usage is not None:
        fields["input_tokens"] = done.usage.input_tokens
        fields["output_tokens"] = done.usage.output_tokens
    if done.error is not None:
        fields["error_code"] = done.error.code
        fields["error_message"] = done.error.message
    return fields


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
