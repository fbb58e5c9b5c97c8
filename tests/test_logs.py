"""Structured logs: JSON lines, context ids from contextvars, exceptions as fields."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from parley.engines.base import Usage
from parley.errors import ConfigError, EngineError
from parley.logs import bind, configure_logging, current_context, log_context, turn_fields
from parley.pipeline.events import ResponseDone
from parley.pipeline.timeline import TurnTimeline

log = logging.getLogger("parley.test")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """configure_logging into a buffer; the parley logger is put back as it was afterwards."""
    logger = logging.getLogger("parley")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    out = io.StringIO()
    configure_logging("debug", stream=out)
    yield out
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_logs_are_one_json_object_per_line(stream: io.StringIO) -> None:
    log.info("hello %s", "world")
    log.debug("multi\nline")
    first, second = lines(stream)
    assert first["msg"] == "hello world"
    assert (first["level"], first["logger"]) == ("INFO", "parley.test")
    assert first["ts"].endswith("Z")
    ts = dt.datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - ts).total_seconds()) < 60
    assert second["msg"] == "multi\nline"
    assert len(stream.getvalue().splitlines()) == 2


def test_logs_carry_context_ids_inside_and_not_outside(stream: io.StringIO) -> None:
    log.info("before")
    with log_context(session_id="sess_1"):
        log.info("in session")
        with log_context(turn_id="turn_1", response_id="resp_1"):
            log.info("in turn")
        log.info("after turn")
    log.info("after")
    before, in_session, in_turn, after_turn, after = lines(stream)
    assert "session_id" not in before
    assert in_session["session_id"] == "sess_1"
    assert "turn_id" not in in_session
    assert (in_turn["session_id"], in_turn["turn_id"], in_turn["response_id"]) == (
        "sess_1",
        "turn_1",
        "resp_1",
    )
    assert "turn_id" not in after_turn
    assert not {"session_id", "turn_id", "response_id"} & set(after)
    assert current_context() == {}


def test_logs_none_in_context_drops_an_id(stream: io.StringIO) -> None:
    with log_context(session_id="s", turn_id="t"), log_context(turn_id=None):
        log.info("no turn")
    (line,) = lines(stream)
    assert line["session_id"] == "s"
    assert "turn_id" not in line


async def test_logs_bind_stays_in_its_task(stream: io.StringIO) -> None:
    async def session(session_id: str) -> None:
        bind(session_id=session_id)
        await asyncio.sleep(0)
        log.info("from %s", session_id)

        async def child() -> None:
            log.info("child of %s", session_id)

        await asyncio.create_task(child())

    await asyncio.gather(session("a"), session("b"))
    log.info("outside")
    by_msg = {line["msg"]: line.get("session_id") for line in lines(stream)}
    assert by_msg == {
        "from a": "a",
        "from b": "b",
        "child of a": "a",
        "child of b": "b",
        "outside": None,
    }


def test_logs_exceptions_as_fields(stream: io.StringIO) -> None:
    try:
        raise EngineError("model fell over")
    except EngineError:
        log.exception("turn failed")
    (line,) = lines(stream)
    assert line["level"] == "ERROR"
    assert line["exc_type"] == "EngineError"
    assert line["exc_message"] == "model fell over"
    assert line["traceback"].startswith("Traceback (most recent call last)")
    assert "model fell over" in line["traceback"]


def test_logs_extra_fields_and_levels(stream: io.StringIO) -> None:
    configure_logging("warning", stream=stream)
    log.info("dropped")
    log.warning("kept", extra={"stages_ms": {"send": 1.5}, "status": "completed"})
    (line,) = lines(stream)
    assert line["msg"] == "kept"
    assert line["stages_ms"] == {"send": 1.5}
    assert line["status"] == "completed"
    # Reconfiguring replaced the handler: one line, not two.
    assert len(stream.getvalue().splitlines()) == 1


def test_logs_text_mode_shows_context(stream: io.StringIO) -> None:
    configure_logging("INFO", json=False, stream=stream)
    with log_context(session_id="sess_9"):
        log.info("plain")
    text = stream.getvalue()
    assert "INFO parley.test: plain [session_id=sess_9]" in text


@pytest.mark.parametrize("level", ["loud", "", "10"])
def test_logs_bad_level_is_a_config_error(level: str) -> None:
    with pytest.raises(ConfigError, match="log_level") as info:
        configure_logging(level, stream=io.StringIO())
    assert info.value.param == "log_level"


def test_logs_turn_fields() -> None:
    timeline = TurnTimeline(
        {
            "last_voiced": 0,
            "end_of_turn": 500_000_000,
            "asr_final": 600_000_000,
            "llm_first_token": 700_000_000,
            "tts_first_audio": 800_000_000,
            "first_audio_out": 800_500_000,
        }
    )
    done = ResponseDone(
        "resp_1", "item_1", "turn_1", "completed", None, "Hi.", 1234.56, Usage(10, 3), timeline
    )
    fields = turn_fields(done)
    assert fields["status"] == "completed"
    assert fields["audio_ms"] == 1234.6
    assert fields["stages_ms"] == {
        "endpointing": 500.0,
        "asr_final": 100.0,
        "llm_first_token": 100.0,
        "tts_first_audio": 100.0,
        "send": 0.5,
    }
    assert fields["turn_gap_ms"] == 800.5
    assert fields["response_latency_ms"] == 300.5
    assert (fields["input_tokens"], fields["output_tokens"]) == (10, 3)
    failed = turn_fields(
        ResponseDone(
            "r", "i", None, "failed", None, "", 0.0, None, TurnTimeline(), EngineError("down")
        )
    )
    assert failed["error_code"] == "engine_error"
    assert failed["turn_gap_ms"] is None
