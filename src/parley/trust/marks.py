"""Watermark payloads: the 32-bit id each synthesised stream carries, and what it stands for.

A stream (a Realtime response, a ``/v1/audio/speech`` call, ``parley say``) gets a random id
that no other stream of this database has; the ``watermark_marks`` table resolves it to the
tenant, the response and the time, so a detected mark names who made the audio and when
without the audio itself carrying more than 32 bits. :class:`Marker` hands one caller's streams
their embedders.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from parley.audio.frames import Frame
from parley.store import Database

__all__ = ["MarkRegistry", "Marker", "StreamMarker"]

_TRIES = 16  # ids drawn before giving up: 2**32 ids, so a collision is rare, 16 never


class StreamMarker(Protocol):
    """What embeds a mark in one stream, chunk by chunk (``parley.trust.watermark.Embedder``)."""

    def process(self, frame: Frame) -> Frame: ...

    def flush(self) -> Frame: ...


class MarkRegistry:
    """The ``watermark_marks`` table: payload id -> tenant, response id, time."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def issue(self, tenant: str, response_id: str) -> int:
        """A new payload id for ``response_id`` of ``tenant``, recorded before it is used."""
        for _ in range(_TRIES):
            mark = secrets.randbits(32)
            added = self._db.execute(
                "INSERT INTO watermark_marks (id, tenant, response_id, created_at) "
                "VALUES (:id, :tenant, :response_id, :now) ON CONFLICT (id) DO NOTHING",
                {"id": mark, "tenant": tenant, "response_id": response_id, "now": time.time()},
            )
            if added == 1:
                return mark
        raise RuntimeError("no free watermark id after 16 draws")  # 2**32 ids: unreachable

    def resolve(self, mark: int) -> dict[str, Any] | None:
        """``{"id", "tenant", "response_id", "time"}`` of a payload, or None if unknown."""
        rows = self._db.query(
            "SELECT id, tenant, response_id, created_at FROM watermark_marks WHERE id = :id",
            {"id": mark},
        )
        if not rows:
            return None
        row = rows[0]
        return {
            "id": int(row["id"]),
            "tenant": row["tenant"],
            "response_id": row["response_id"],
            "time": float(row["created_at"]),
        }


@dataclass(frozen=True, slots=True)
class Marker:
    """Embedders for one tenant's streams: each stream gets its own payload id."""

    key: Any  # parley.trust.watermark.WatermarkKey
    registry: MarkRegistry
    tenant: str

    def embedder(self, response_id: str, sample_rate: int) -> tuple[int, StreamMarker]:
        """The payload id issued for ``response_id`` and the embedder carrying it."""
        from parley.trust.watermark import Embedder

        mark = self.registry.issue(self.tenant, response_id)
        return mark, Embedder(self.key, mark, sample_rate)
