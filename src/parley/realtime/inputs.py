"""The input side of a Realtime session: the audio buffer, committed turns and their transcripts.

:class:`Inputs` keeps what the session must know of the user's audio (how much arrived, which
committed items still wait for their transcript and whether a client's ``response.create``
already answers them, the transcript each partial has shown so far, when the caller has been
silent too long) and builds the server events about it. It decides nothing about responses: the
session asks it and then moves its response state machine. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parley.engines.base import Message
from parley.errors import ParleyError, error_body, error_event
from parley.pipeline.history import History
from parley.realtime.items import event, user_item

__all__ = ["Inputs", "Transcribed"]


@dataclass(frozen=True, slots=True)
class Transcribed:
    """What a finished transcript means: events for the client, and whether a client's
    ``response.create`` already answers the item (so no automatic response is due)."""

    events: list[dict[str, Any]]
    claimed: bool


@dataclass(slots=True)
class Inputs:
    history: History
    input_ms: float = 0.0  # input audio received, the session's clock
    buffer_ms: float = 0.0  # of which not yet committed or cleared
    idle_deadline_ms: float | None = None
    transcribing: set[str] = field(default_factory=set)  # user items awaiting a transcript
    claimed: set[str] = field(default_factory=set)  # ...that a response.create already answers
    _partials: dict[str, str] = field(default_factory=dict)
    _audio_s: dict[str, float] = field(default_factory=dict)

    def appended(self, ms: float) -> bool:
        """``ms`` of audio arrived; True if the caller has now been silent too long."""
        self.input_ms += ms
        self.buffer_ms += ms
        return self.idle_deadline_ms is not None and self.input_ms >= self.idle_deadline_ms

    def replied(self, audio_ms: float, idle_timeout_ms: int | None) -> None:
        """A reply of ``audio_ms`` ended: the idle timer starts when it has been played."""
        if idle_timeout_ms:
            self.idle_deadline_ms = self.input_ms + audio_ms + idle_timeout_ms
            self.buffer_ms = 0.0

    def timed_out(self) -> dict[str, Any]:
        """The caller stayed silent past ``idle_timeout_ms``: an empty user turn."""
        self.idle_deadline_ms = None
        item = self.history.add(Message("user", ""))
        item.view = user_item(item.id, [])
        end = int(self.input_ms)
        return event(
            "input_audio_buffer.timeout_triggered",
            item_id=item.id,
            audio_start_ms=max(int(end - self.buffer_ms), 0),
            audio_end_ms=end,
        )

    def speech_started(self, item_id: str, start_ms: float) -> dict[str, Any]:
        self.idle_deadline_ms = None  # the caller is speaking
        return event(
            "input_audio_buffer.speech_started", item_id=item_id, audio_start_ms=int(start_ms)
        )

    def speech_stopped(self, item_id: str, end_ms: float) -> dict[str, Any]:
        return event("input_audio_buffer.speech_stopped", item_id=item_id, audio_end_ms=int(end_ms))

    def awaiting(self, item_id: str) -> None:
        """A client's audio item is being recognised; a response waits for it, none is due."""
        self.transcribing.add(item_id)
        self.claimed.add(item_id)

    def committed(self, item_id: str, audio_ms: float) -> list[dict[str, Any]]:
        self.buffer_ms = 0.0
        item = self.history.get(item_id)
        if item is None:  # the pipeline adds the item at commit; a test double may not
            item = self.history.add(Message("user", ""), item_id=item_id)
        item.view = user_item(item_id, [{"type": "input_audio", "transcript": None}])
        self.transcribing.add(item_id)
        self._audio_s[item_id] = audio_ms / 1000
        previous = self.history.previous_shown(item_id)
        return [
            event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous),
            event("conversation.item.added", item=item.view, previous_item_id=previous),
        ]

    def partial(self, item_id: str, text: str, transcription: bool) -> list[dict[str, Any]]:
        before = self._partials.get(item_id, "")
        self._partials[item_id] = text
        if not transcription or not text.startswith(before) or text == before:
            return []  # deltas only ever append; a revised hypothesis waits for the final
        return [
            event(
                "conversation.item.input_audio_transcription.delta",
                item_id=item_id,
                content_index=0,
                delta=text[len(before) :],
            )
        ]

    def transcribed(
        self,
        item_id: str,
        text: str | None,
        error: ParleyError | None,
        *,
        transcription: bool,
        announce: bool,
    ) -> Transcribed:
        """A user item's transcript is in (``text``), or its recognition failed. A committed
        turn's item is done now (``announce``); a client's audio item was done when created."""
        self._partials.pop(item_id, None)
        self.transcribing.discard(item_id)
        claimed = item_id in self.claimed
        self.claimed.discard(item_id)
        audio_s = self._audio_s.pop(item_id, 0.0)
        item = self.history.get(item_id)
        events: list[dict[str, Any]] = []
        if error is not None:
            if transcription:
                events.append(
                    event(
                        "conversation.item.input_audio_transcription.failed",
                        item_id=item_id,
                        content_index=0,
                        error=error_body(error),
                    )
                )
            else:
                events.append(error_event(error))
        elif item is not None and item.view is not None:
            for part in item.view["content"]:
                if part["type"] == "input_audio" and part["transcript"] is None:
                    part["transcript"] = text
            if transcription:
                events.append(
                    event(
                        "conversation.item.input_audio_transcription.completed",
                        item_id=item_id,
                        content_index=0,
                        transcript=text,
                        usage={"type": "duration", "seconds": round(audio_s, 3)},
                    )
                )
            if announce:
                events.append(
                    event(
                        "conversation.item.done",
                        item=item.view,
                        previous_item_id=self.history.previous_shown(item_id),
                    )
                )
        return Transcribed(events, claimed)
