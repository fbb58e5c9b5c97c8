"""The response state machine of a Realtime session, and the server events of one response.

A session has at most one active response. Its phase is explicit, and the only legal moves
are those in :data:`TRANSITIONS` (a move not in the table raises :class:`IllegalTransition`, a
bug of parley's, never the client's)::

    IDLE ──create──────────────▶ GENERATING      response.created; the pipeline starts it
    IDLE ──create_waiting──────▶ TRANSCRIBING    response.created; a committed turn is still
                                                 being recognised, the response waits for it
    TRANSCRIBING ──transcribed─▶ GENERATING      every awaited transcript is in
    TRANSCRIBING ──cancel──────▶ IDLE            response.done (cancelled): nothing had started
    TRANSCRIBING ──fail────────▶ IDLE            response.done (failed): the awaited turn's
                                                 recognition failed
    GENERATING ──cancel────────▶ CANCELLING      the pipeline is told to stop
    GENERATING ──done──────────▶ IDLE            response.done, whatever its status
    GENERATING ──fail──────────▶ IDLE            response.done (failed): the pipeline refused
    CANCELLING ──done──────────▶ IDLE            response.done (cancelled)
    CANCELLING ──fail──────────▶ IDLE            response.done (cancelled): nothing was running

Every ``response.created`` is followed by exactly one ``response.done``: each path out of a
non-idle phase ends in IDLE through ``done``, ``cancel`` (from TRANSCRIBING) or ``fail``, and
each of those emits it. :class:`ActiveResponse` builds the response's events; it owns no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from parley.audio.formats import WireFormat, b64encode_audio, encode_wire
from parley.audio.frames import Frame
from parley.engines.base import Usage
from parley.errors import ParleyError, error_body
from parley.pipeline.options import ResponseOptions
from parley.pipeline.timeline import TurnTimeline
from parley.realtime.items import (
    assistant_item,
    function_call_item,
    response_object,
    usage_object,
)

__all__ = [
    "TRANSITIONS",
    "ActiveResponse",
    "IllegalTransition",
    "Phase",
    "Trigger",
]


class Phase(StrEnum):
    IDLE = "idle"
    TRANSCRIBING = "transcribing"
    GENERATING = "generating"
    CANCELLING = "cancelling"


class Trigger(StrEnum):
    CREATE = "create"
    CREATE_WAITING = "create_waiting"
    TRANSCRIBED = "transcribed"
    CANCEL = "cancel"
    DONE = "done"
    FAIL = "fail"


TRANSITIONS: dict[tuple[Phase, Trigger], Phase] = {
    (Phase.IDLE, Trigger.CREATE): Phase.GENERATING,
    (Phase.IDLE, Trigger.CREATE_WAITING): Phase.TRANSCRIBING,
    (Phase.TRANSCRIBING, Trigger.TRANSCRIBED): Phase.GENERATING,
    (Phase.TRANSCRIBING, Trigger.CANCEL): Phase.IDLE,
    (Phase.TRANSCRIBING, Trigger.FAIL): Phase.IDLE,
    (Phase.GENERATING, Trigger.CANCEL): Phase.CANCELLING,
    (Phase.GENERATING, Trigger.DONE): Phase.IDLE,
    (Phase.GENERATING, Trigger.FAIL): Phase.IDLE,
    (Phase.CANCELLING, Trigger.DONE): Phase.IDLE,
    (Phase.CANCELLING, Trigger.FAIL): Phase.IDLE,
}


class IllegalTransition(RuntimeError):
    """A move the table does not allow: a bug in the session, never the client's fault."""


def next_phase(phase: Phase, trigger: Trigger) -> Phase:
    try:
        return TRANSITIONS[(phase, trigger)]
    except KeyError:
        raise IllegalTransition(f"no transition from {phase} on {trigger}") from None


Event = Callable[..., dict[str, Any]]
Status = Literal["completed", "cancelled", "incomplete", "failed"]


@dataclass(slots=True)
class ActiveResponse:
    """The one response a session is working on, and what the client has been told of it."""

    id: str
    item_id: str
    options: ResponseOptions
    conversation_id: str
    voice: str
    output_format: WireFormat
    format_object: dict[str, Any]
    max_output_tokens: int | Literal["inf"]
    metadata: dict[str, str] | None = None
    turn_id: str | None = None
    phase: Phase = Phase.IDLE
    # Committed user items whose transcripts this response waits for (TRANSCRIBING).
    waiting: set[str] = field(default_factory=set)
    message_index: int | None = None
    text: str = ""
    audio_ms: float = 0.0
    output: list[dict[str, Any]] = field(default_factory=list)

    def move(self, trigger: Trigger) -> Phase:
        self.phase = next_phase(self.phase, trigger)
        return self.phase

    @property
    def audio(self) -> bool:
        return self.options.audio

    def object(self, status: Any, **kw: Any) -> dict[str, Any]:
        return response_object(
            self.id,
            status=status,
            conversation_id=self.conversation_id,
            modalities=["audio"] if self.audio else ["text"],
            output=self.output,
            voice=self.voice,
            output_format=self.format_object,
            max_output_tokens=self.max_output_tokens,
            metadata=self.metadata,
            **kw,
        )

    def created(self, event: Event) -> dict[str, Any]:
        return event("response.created", response=self.object("in_progress"))

    def open_message(self, event: Event, previous: str | None) -> tuple[dict[str, Any], ...]:
        """The assistant message's opening events (once), with the item the client now sees."""
        item = assistant_item(self.item_id, "in_progress", audio=self.audio)
        self.message_index = len(self.output)
        self.output.append(item)
        part = {"type": "audio", "transcript": ""} if self.audio else {"type": "text", "text": ""}
        return (
            event(
                "response.output_item.added",
                response_id=self.id,
                output_index=self.message_index,
                item=item,
            ),
            event("conversation.item.added", item=item, previous_item_id=previous),
            event(
                "response.content_part.added",
                response_id=self.id,
                item_id=self.item_id,
                output_index=self.message_index,
                content_index=0,
                part=part,
            ),
        )

    def _part(self) -> dict[str, Any]:
        return {
            "response_id": self.id,
            "item_id": self.item_id,
            "output_index": self.message_index or 0,
            "content_index": 0,
        }

    def text_delta(self, event: Event, text: str) -> dict[str, Any]:
        self.text += text
        kind = (
            "response.output_audio_transcript.delta" if self.audio else "response.output_text.delta"
        )
        return event(kind, delta=text, **self._part())

    def audio_delta(self, event: Event, frame: Frame) -> dict[str, Any]:
        self.audio_ms += frame.duration_ms
        data = b64encode_audio(encode_wire(frame, self.output_format))
        return event("response.output_audio.delta", delta=data, **self._part())

    def tool_call(
        self,
        event: Event,
        item_id: str,
        call_id: str,
        name: str,
        arguments: str,
        previous: str | None,
    ) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
        """The events of a complete function call, and its item as it now stands."""
        index = len(self.output)
        pending = function_call_item(
            item_id, "in_progress", call_id=call_id, name=name, arguments=""
        )
        done = function_call_item(
            item_id, "completed", call_id=call_id, name=name, arguments=arguments
        )
        self.output.append(done)
        common = {
            "response_id": self.id,
            "item_id": item_id,
            "output_index": index,
            "call_id": call_id,
        }
        events = (
            event(
                "response.output_item.added", response_id=self.id, output_index=index, item=pending
            ),
            event("conversation.item.added", item=pending, previous_item_id=previous),
            event("response.function_call_arguments.delta", delta=arguments, **common),
            event(
                "response.function_call_arguments.done", arguments=arguments, name=name, **common
            ),
            event("response.output_item.done", response_id=self.id, output_index=index, item=done),
            event("conversation.item.done", item=done, previous_item_id=previous),
        )
        return events, done

    def close_message(
        self, event: Event, status: Status, previous: str | None
    ) -> tuple[tuple[dict[str, Any], ...], dict[str, Any] | None]:
        """The message's closing events, and its final item (None: no message was opened)."""
        if self.message_index is None:
            return (), None
        item_status: Literal["completed", "incomplete"] = (
            "completed" if status == "completed" else "incomplete"
        )
        item = assistant_item(self.item_id, item_status, audio=self.audio, text=self.text)
        self.output[self.message_index] = item
        common = self._part()
        events: list[dict[str, Any]] = []
        if self.audio:
            events.append(event("response.output_audio.done", **common))
            events.append(
                event("response.output_audio_transcript.done", transcript=self.text, **common)
            )
            part = {"type": "audio", "transcript": self.text}
        else:
            events.append(event("response.output_text.done", text=self.text, **common))
            part = {"type": "text", "text": self.text}
        events.append(event("response.content_part.done", part=part, **common))
        events.append(
            event(
                "response.output_item.done",
                response_id=self.id,
                output_index=self.message_index,
                item=item,
            )
        )
        events.append(event("conversation.item.done", item=item, previous_item_id=previous))
        return tuple(events), item

    def done(
        self,
        event: Event,
        status: Status,
        *,
        reason: str | None = None,
        usage: Usage | None = None,
        error: ParleyError | None = None,
    ) -> dict[str, Any]:
        return event(
            "response.done",
            response=self.object(
                status,
                usage=usage_object(usage),
                reason=reason,
                error=error_body(error) if error is not None else None,
            ),
        )

    def timeline_event(
        self, event: Event, status: Status, timeline: TurnTimeline, cost_usd: float | None = None
    ) -> dict[str, Any]:
        """parley's extension: the turn's latency timeline (``?parley_timeline=1``), and what
        the response cost where metering has prices."""
        cost = {} if cost_usd is None else {"cost_usd": cost_usd}
        return event(
            "parley.turn.timeline",
            response_id=self.id,
            item_id=self.item_id,
            status=status,
            audio_ms=round(self.audio_ms, 1),
            **timeline.to_dict(),
            **cost,
            _first_audio_out_ns=timeline.marks.get("first_audio_out"),
        )
