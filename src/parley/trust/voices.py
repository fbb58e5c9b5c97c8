"""Voice consents and custom voices, per tenant: the repositories over migration 6's tables.

A :class:`Consent` is a recording of a person reading the consent phrase (checked by the
caller, :mod:`parley.trust.consent`); a :class:`CustomVoice` is an audio sample of the same
speaker (checked by the caller, :mod:`parley.trust.speaker`) made from one consent. Every
statement names the tenant, so a tenant never sees, renames, deletes or uses another's; an id
of another tenant is simply not found. Deleting a consent deletes, in the same transaction,
every voice made from it; :func:`resolve_voice` (called for each synthesis) then finds none.
Deleting keeps the row (``deleted_at``) for the record but wipes the audio and the embedding.

This module stores; it must not decode audio, recognise speech or verify speakers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from parley.errors import ClientError, Code, NotFoundError
from parley.ids import new_id
from parley.store.database import Database, Row
from parley.trust.speaker import Embedding

__all__ = [
    "DEFAULT_MAX_VOICES",
    "Consent",
    "ConsentStore",
    "CustomVoice",
    "VoiceStore",
    "resolve_voice",
]

DEFAULT_MAX_VOICES: Final = 20

Clock = Callable[[], float]


def _embedding(value: Any) -> Embedding | None:
    if value is None or not len(value):
        return None
    return np.frombuffer(bytes(value), dtype=np.float32).copy()


def _blob(embedding: Embedding | None) -> bytes | None:
    return None if embedding is None else np.asarray(embedding, dtype=np.float32).tobytes()


@dataclass(frozen=True, slots=True)
class Consent:
    id: str
    tenant: str
    name: str
    language: str
    created_at: float
    transcript: str
    embedding: Embedding | None

    def to_wire(self) -> dict[str, Any]:
        """The SDK's ``VoiceConsent``."""
        return {
            "id": self.id,
            "object": "audio.voice_consent",
            "name": self.name,
            "language": self.language,
            "created_at": int(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class CustomVoice:
    id: str
    tenant: str
    name: str
    consent_id: str
    created_at: float
    sample: bytes  # the audio sample as uploaded
    sample_type: str  # its file name
    embedding: Embedding | None

    def to_wire(self) -> dict[str, Any]:
        """The SDK's ``Voice``."""
        return {
            "id": self.id,
            "object": "audio.voice",
            "name": self.name,
            "type": "audio_sample",
            "created_at": int(self.created_at),
        }


_CONSENT_COLUMNS = "id, tenant, name, language, created_at, transcript, embedding"
_VOICE_COLUMNS = "id, tenant, name, consent_id, created_at, sample, sample_type, embedding"


def _consent(row: Row) -> Consent:
    return Consent(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        language=row["language"],
        created_at=float(row["created_at"]),
        transcript=row["transcript"],
        embedding=_embedding(row["embedding"]),
    )


def _voice(row: Row) -> CustomVoice:
    return CustomVoice(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        consent_id=row["consent_id"],
        created_at=float(row["created_at"]),
        sample=bytes(row["sample"]),
        sample_type=row["sample_type"],
        embedding=_embedding(row["embedding"]),
    )


def _consent_not_found(consent_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"No voice consent with id {consent_id!r}.", param=param)


class ConsentStore:
    """One tenant's voice consents."""

    def __init__(self, db: Database, tenant: str, *, clock: Clock = time.time) -> None:
        self.db, self.tenant, self.clock = db, tenant, clock

    def create(
        self,
        *,
        name: str,
        language: str,
        recording: bytes,
        recording_type: str = "",
        transcript: str = "",
        embedding: Embedding | None = None,
    ) -> Consent:
        consent = Consent(
            new_id("cons"), self.tenant, name, language, self.clock(), transcript, embedding
        )
        self.db.execute(
            "INSERT INTO voice_consents (id, tenant, name, language, recording, recording_type,"
            " transcript, embedding, created_at) VALUES (:id, :tenant, :name, :language,"
            " :recording, :recording_type, :transcript, :embedding, :created_at)",
            {
                "id": consent.id,
                "tenant": self.tenant,
                "name": name,
                "language": language,
                "recording": recording,
                "recording_type": recording_type,
                "transcript": transcript,
                "embedding": _blob(embedding),
                "created_at": consent.created_at,
            },
        )
        return consent

    def get(self, consent_id: str, *, param: str | None = None) -> Consent:
        """The live consent ``consent_id`` of this tenant; else NotFoundError (on ``param``)."""
        rows = self.db.query(
            f"SELECT {_CONSENT_COLUMNS} FROM voice_consents"
            " WHERE id = :id AND tenant = :tenant AND deleted_at IS NULL",
            {"id": consent_id, "tenant": self.tenant},
        )
        if not rows:
            raise _consent_not_found(consent_id, param)
        return _consent(rows[0])

    def list(self, *, after: str | None = None, limit: int = 20) -> tuple[list[Consent], bool]:
        """Newest first, ``limit`` of them after the consent ``after``; and whether more follow."""
        params: dict[str, object] = {"tenant": self.tenant, "limit": limit + 1}
        where = "tenant = :tenant AND deleted_at IS NULL"
        if after:
            cursor = self.db.query(
                "SELECT created_at FROM voice_consents WHERE id = :id AND tenant = :tenant",
                {"id": after, "tenant": self.tenant},
            )
            if not cursor:
                raise _consent_not_found(after, "after")
            where += " AND (created_at < :at OR (created_at = :at AND id < :after))"
            params |= {"at": cursor[0]["created_at"], "after": after}
        rows = self.db.query(
            f"SELECT {_CONSENT_COLUMNS} FROM voice_consents WHERE {where}"
            " ORDER BY created_at DESC, id DESC LIMIT :limit",
            params,
        )
        return [_consent(row) for row in rows[:limit]], len(rows) > limit

    def recording(self, consent_id: str) -> bytes:
        """The live consent's recording as uploaded (NotFoundError on ``consent``)."""
        rows = self.db.query(
            "SELECT recording FROM voice_consents"
            " WHERE id = :id AND tenant = :tenant AND deleted_at IS NULL",
            {"id": consent_id, "tenant": self.tenant},
        )
        if not rows:
            raise _consent_not_found(consent_id, "consent")
        return bytes(rows[0]["recording"])

    def rename(self, consent_id: str, name: str) -> Consent:
        changed = self.db.execute(
            "UPDATE voice_consents SET name = :name"
            " WHERE id = :id AND tenant = :tenant AND deleted_at IS NULL",
            {"id": consent_id, "tenant": self.tenant, "name": name},
        )
        if not changed:
            raise _consent_not_found(consent_id)
        return self.get(consent_id)

    def delete(self, consent_id: str) -> None:
        """Delete the consent and, at once, every voice made from it (their audio wiped)."""
        now = self.clock()
        params = {"id": consent_id, "tenant": self.tenant, "now": now}
        with self.db.transaction():
            changed = self.db.execute(
                "UPDATE voice_consents SET deleted_at = :now, recording = :empty, embedding = NULL"
                " WHERE id = :id AND tenant = :tenant AND deleted_at IS NULL",
                params | {"empty": b""},
            )
            if not changed:
                raise _consent_not_found(consent_id)
            self.db.execute(
                "UPDATE custom_voices SET deleted_at = :now, sample = :empty, embedding = NULL"
                " WHERE consent_id = :id AND tenant = :tenant AND deleted_at IS NULL",
                params | {"empty": b""},
            )


class VoiceStore:
    """One tenant's custom voices, at most ``max_voices`` live at once."""

    def __init__(
        self,
        db: Database,
        tenant: str,
        *,
        max_voices: int = DEFAULT_MAX_VOICES,
        clock: Clock = time.time,
    ) -> None:
        self.db, self.tenant, self.max_voices, self.clock = db, tenant, max_voices, clock

    def create(
        self,
        *,
        name: str,
        consent_id: str,
        sample: bytes,
        sample_type: str = "",
        embedding: Embedding | None = None,
    ) -> CustomVoice:
        """A new voice from the live consent ``consent_id`` (NotFoundError on ``consent``), past
        the limit a 400 ``voice_limit_reached``."""
        voice = CustomVoice(
            new_id("voice"),
            self.tenant,
            name,
            consent_id,
            self.clock(),
            sample,
            sample_type,
            embedding,
        )
        with self.db.transaction():
            ConsentStore(self.db, self.tenant).get(consent_id, param="consent")
            count = self.db.query(
                "SELECT COUNT(*) FROM custom_voices WHERE tenant = :tenant AND deleted_at IS NULL",
                {"tenant": self.tenant},
            )[0][0]
            if count >= self.max_voices:
                raise ClientError(
                    f"This project already has {count} custom voices, the most allowed"
                    f" ({self.max_voices}); delete one first.",
                    code=Code.VOICE_LIMIT_REACHED,
                )
            self.db.execute(
                "INSERT INTO custom_voices (id, tenant, name, consent_id, sample, sample_type,"
                " embedding, created_at) VALUES (:id, :tenant, :name, :consent_id, :sample,"
                " :sample_type, :embedding, :created_at)",
                {
                    "id": voice.id,
                    "tenant": self.tenant,
                    "name": name,
                    "consent_id": consent_id,
                    "sample": sample,
                    "sample_type": sample_type,
                    "embedding": _blob(embedding),
                    "created_at": voice.created_at,
                },
            )
        return voice

    def get(self, voice_id: str) -> CustomVoice:
        voice = resolve_voice(self.db, self.tenant, voice_id)
        if voice is None:
            raise NotFoundError(f"No voice with id {voice_id!r}.")
        return voice

    def list(self) -> list[CustomVoice]:
        rows = self.db.query(
            f"SELECT {_VOICE_COLUMNS} FROM custom_voices"
            " WHERE tenant = :tenant AND deleted_at IS NULL ORDER BY created_at DESC, id DESC",
            {"tenant": self.tenant},
        )
        return [_voice(row) for row in rows]

    def delete(self, voice_id: str) -> None:
        changed = self.db.execute(
            "UPDATE custom_voices SET deleted_at = :now, sample = :empty, embedding = NULL"
            " WHERE id = :id AND tenant = :tenant AND deleted_at IS NULL",
            {"id": voice_id, "tenant": self.tenant, "now": self.clock(), "empty": b""},
        )
        if not changed:
            raise NotFoundError(f"No voice with id {voice_id!r}.")


def resolve_voice(db: Database, tenant: str, voice_id: str) -> CustomVoice | None:
    """``tenant``'s live voice ``voice_id`` (its consent live too), or None. One indexed query:
    call it for each synthesis, so that a deleted consent silences its voices at once."""
    rows = db.query(
        "SELECT v.id, v.tenant, v.name, v.consent_id, v.created_at, v.sample, v.sample_type,"
        " v.embedding FROM custom_voices v JOIN voice_consents c ON c.id = v.consent_id"
        " WHERE v.id = :id AND v.tenant = :tenant AND v.deleted_at IS NULL"
        " AND c.tenant = :tenant AND c.deleted_at IS NULL",
        {"id": voice_id, "tenant": tenant},
    )
    return _voice(rows[0]) if rows else None
