"""REST endpoints for voice consents and custom voices, as the ``openai`` SDK's
``audio.voice_consents`` and ``audio.voices`` call them.

- ``POST /v1/audio/voice_consents`` (multipart ``name``, ``language``, ``recording`` up to
  10 MiB): the recording is recognised with the server's recogniser and must read the consent
  phrase of its language (400 ``consent_phrase_mismatch``); its speaker embedding is kept when a
  speaker verifier is available. ``GET`` lists (``after``, ``limit``, newest first);
  ``GET|POST|DELETE /v1/audio/voice_consents/{id}`` retrieves, renames (JSON or form ``name``)
  and deletes; deleting a consent deletes every voice made from it.
- ``POST /v1/audio/voices`` (multipart ``name``, ``audio_sample`` up to 30 s, ``consent``): the
  sample's speaker must be the consent recording's (400 ``speaker_mismatch``; 503
  ``speaker_verification_unavailable`` without a verifier); at most ``max_voices`` per tenant
  (400 ``voice_limit_reached``). ``DELETE /v1/audio/voices/{id}``; and, beyond the SDK,
  ``GET /v1/audio/voices`` and ``GET /v1/audio/voices/{id}``.

Everything is the calling tenant's (``principal_of(scope).tenant``): another tenant's ids are
404s. Errors use OpenAI's shape (:func:`parley.server.openai_errors.guarded`). This module keeps
to HTTP; the checks are :mod:`parley.trust`'s.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from parley.audio.containers import decode_upload
from parley.audio.frames import Frame
from parley.audio.resample import resample
from parley.engines.base import ASR
from parley.engines.registry import languages_of
from parley.errors import (
    ClientError,
    Code,
    ParleyError,
    PayloadTooLargeError,
    ProtocolError,
)
from parley.server.auth import principal_of
from parley.server.http_streams import limited, read_upload
from parley.server.openai_errors import guarded
from parley.store.database import Database
from parley.trust.consent import DEFAULT_OPERATOR, check_phrase, phrase_language
from parley.trust.speaker import SpeakerVerifier, load_speaker_verifier, similarity
from parley.trust.voices import DEFAULT_MAX_VOICES, ConsentStore, VoiceStore

__all__ = [
    "MAX_CONSENT_S",
    "MAX_RECORDING_BYTES",
    "MAX_SAMPLE_S",
    "voice_routes",
]

MAX_RECORDING_BYTES: Final = 10 * 1024 * 1024
"""The largest consent recording or voice sample accepted (OpenAI's limit)."""
MAX_SAMPLE_S: Final = 30.0
MAX_CONSENT_S: Final = 120.0
"""A consent phrase takes ~8 s to read; a recording past this is refused before recognition."""
_FORM_SLACK = 64 * 1024  # the multipart framing and text fields around the file

VerifierLoader = Callable[[], SpeakerVerifier]


Audit = Callable[..., None]
"""``audit(kind, *, tenant, **fields)``: appends an audit record (ControlPlane.audit_append)."""


def voice_routes(
    db: Database,
    asr: ASR,
    *,
    verifier: VerifierLoader = load_speaker_verifier,
    operator: str = DEFAULT_OPERATOR,
    max_voices: int = DEFAULT_MAX_VOICES,
    max_recording_bytes: int = MAX_RECORDING_BYTES,
    audit: Audit | None = None,
) -> list[Route]:
    """The consent and voice endpoints over ``db``, recognising consent recordings with ``asr``
    (the server's recogniser) and verifying speakers with what ``verifier`` loads (once, on
    first use; retried while it fails)."""
    api = _VoicesAPI(db, asr, _Lazy(verifier), operator, max_voices, max_recording_bytes, audit)
    consents, voices = "/v1/audio/voice_consents", "/v1/audio/voices"
    return [
        Route(consents, guarded(api.create_consent), methods=["POST"]),
        Route(consents, guarded(api.list_consents), methods=["GET"]),
        Route(consents + "/{consent_id}", guarded(api.get_consent), methods=["GET"]),
        Route(consents + "/{consent_id}", guarded(api.rename_consent), methods=["POST"]),
        Route(consents + "/{consent_id}", guarded(api.delete_consent), methods=["DELETE"]),
        Route(voices, guarded(api.create_voice), methods=["POST"]),
        Route(voices, guarded(api.list_voices), methods=["GET"]),
        Route(voices + "/{voice_id}", guarded(api.get_voice), methods=["GET"]),
        Route(voices + "/{voice_id}", guarded(api.delete_voice), methods=["DELETE"]),
    ]


@dataclass
class _Lazy:
    """The verifier, loaded on first use (it takes a second and may be unavailable)."""

    load: VerifierLoader
    _value: SpeakerVerifier | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self) -> SpeakerVerifier:
        with self._lock:
            if self._value is None:
                self._value = self.load()
            return self._value


@dataclass(frozen=True, slots=True)
class _Form:
    fields: dict[str, str]
    file_name: str
    data: bytes


@dataclass
class _VoicesAPI:
    db: Database
    asr: ASR
    verifier: _Lazy
    operator: str
    max_voices: int
    max_bytes: int
    audit: Audit | None = None  # (kind, tenant, fields) -> the audit log

    def _record(self, request: Request, kind: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit(kind, tenant=principal_of(request.scope).tenant, **fields)

    def _consents(self, request: Request) -> ConsentStore:
        return ConsentStore(self.db, principal_of(request.scope).tenant)

    def _voices(self, request: Request) -> VoiceStore:
        tenant = principal_of(request.scope).tenant
        return VoiceStore(self.db, tenant, max_voices=self.max_voices)

    # --- consents -----------------------------------------------------------------------------

    async def create_consent(self, request: Request) -> Response:
        form = await self._form(request, "recording")
        name = _required(form.fields, "name")
        language = _required(form.fields, "language")
        primary = phrase_language(language)  # an unsupported language fails before the work
        heard_languages = languages_of(self.asr)
        if heard_languages and primary not in heard_languages:
            raise ClientError(
                f"This server's recogniser ({self.asr.name}) does not transcribe {language!r},"
                " so it cannot check a consent recorded in it; recognisable: "
                f"{', '.join(sorted(heard_languages))}.",
                param="language",
            )
        audio = await self._decode(form, "recording", MAX_CONSENT_S)
        heard = await self.asr.transcribe(resample(audio, self.asr.sample_rate), language=primary)
        check_phrase(heard.text, primary, self.operator)
        try:
            verifier = await asyncio.to_thread(self.verifier.get)
            embedding = await asyncio.to_thread(verifier.embed, audio)
        except ParleyError:
            # Kept without: the voice made from it will verify (or refuse) when it is created.
            embedding = None
        consent = await asyncio.to_thread(
            self._consents(request).create,
            name=name,
            language=language,
            recording=form.data,
            recording_type=form.file_name,
            transcript=heard.text,
            embedding=embedding,
        )
        self._record(request, "consent.created", consent_id=consent.id, language=language)
        return JSONResponse(consent.to_wire())

    async def list_consents(self, request: Request) -> Response:
        after = request.query_params.get("after") or None
        limit_text = request.query_params.get("limit", "20")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            raise ClientError("'limit' must be an integer from 1 to 100.", param="limit")
        store = self._consents(request)
        page, more = await asyncio.to_thread(store.list, after=after, limit=int(limit_text))
        data = [c.to_wire() for c in page]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            }
        )

    async def get_consent(self, request: Request) -> Response:
        consent_id = request.path_params["consent_id"]
        consent = await asyncio.to_thread(self._consents(request).get, consent_id)
        return JSONResponse(consent.to_wire())

    async def rename_consent(self, request: Request) -> Response:
        consent_id = request.path_params["consent_id"]
        fields = await self._fields(request)
        name = _required(fields, "name")
        consent = await asyncio.to_thread(self._consents(request).rename, consent_id, name)
        return JSONResponse(consent.to_wire())

    async def delete_consent(self, request: Request) -> Response:
        consent_id = request.path_params["consent_id"]
        await asyncio.to_thread(self._consents(request).delete, consent_id)
        self._record(request, "consent.deleted", consent_id=consent_id)
        return JSONResponse({"id": consent_id, "object": "audio.voice_consent", "deleted": True})

    # --- voices -------------------------------------------------------------------------------

    async def create_voice(self, request: Request) -> Response:
        form = await self._form(request, "audio_sample")
        kind = form.fields.get("type", "audio_sample")
        if kind != "audio_sample":
            raise ClientError(
                f"Voices of type {kind!r} are not supported here; send type 'audio_sample'.",
                param="type",
            )
        name = _required(form.fields, "name")
        consent_id = _required(form.fields, "consent")
        consent = await asyncio.to_thread(self._consents(request).get, consent_id, param="consent")
        verifier = await asyncio.to_thread(self.verifier.get)
        sample = await self._decode(form, "audio_sample", MAX_SAMPLE_S)
        embedding = await asyncio.to_thread(verifier.embed, sample)
        reference = consent.embedding
        if reference is None:  # recorded while no verifier was available
            recording = await asyncio.to_thread(self._consents(request).recording, consent.id)
            audio = await asyncio.to_thread(decode_upload, recording, name="recording")
            reference = await asyncio.to_thread(verifier.embed, audio)
        score = similarity(reference, embedding)
        if score < verifier.threshold:
            raise ClientError(
                "The audio sample's speaker does not match the consent recording's speaker"
                f" (similarity {score:.2f}, at least {verifier.threshold:.2f} needed).",
                param="audio_sample",
                code=Code.SPEAKER_MISMATCH,
            )
        voice = await asyncio.to_thread(
            self._voices(request).create,
            name=name,
            consent_id=consent.id,
            sample=form.data,
            sample_type=form.file_name,
            embedding=embedding,
        )
        self._record(
            request, "voice.created", voice_id=voice.id, consent_id=consent.id, score=score
        )
        return JSONResponse(voice.to_wire())

    async def list_voices(self, request: Request) -> Response:
        voices = await asyncio.to_thread(self._voices(request).list)
        data = [v.to_wire() for v in voices]
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    async def get_voice(self, request: Request) -> Response:
        voice = await asyncio.to_thread(self._voices(request).get, request.path_params["voice_id"])
        return JSONResponse(voice.to_wire())

    async def delete_voice(self, request: Request) -> Response:
        voice_id = request.path_params["voice_id"]
        await asyncio.to_thread(self._voices(request).delete, voice_id)
        self._record(request, "voice.deleted", voice_id=voice_id)
        return JSONResponse({"id": voice_id, "object": "audio.voice.deleted", "deleted": True})

    # --- bodies -------------------------------------------------------------------------------

    async def _form(self, request: Request, file_field: str) -> _Form:
        upload = await read_upload(
            request,
            file_field,
            self.max_bytes + _FORM_SLACK,
            max_fields=16,
            max_part_size=64 * 1024,
        )
        if len(upload.data) > self.max_bytes:
            raise PayloadTooLargeError(
                f"{file_field!r} is larger than the limit of {self.max_bytes} bytes.",
                param=file_field,
            )
        return _Form(dict(upload.fields), upload.name, upload.data)

    async def _fields(self, request: Request) -> dict[str, str]:
        """A small JSON object or form's string fields."""
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            form = await limited(request, _FORM_SLACK).form(max_files=0, max_fields=16)
            try:
                return {k: v for k, v in form.multi_items() if isinstance(v, str)}
            finally:
                await form.close()
        body = await limited(request, _FORM_SLACK).body()
        try:
            value: Any = json.loads(body or b"{}")
        except ValueError:
            raise ProtocolError("The body is not valid JSON.", code=Code.INVALID_JSON) from None
        if not isinstance(value, dict):
            raise ProtocolError("The body must be a JSON object.", code=Code.INVALID_TYPE)
        return {k: v for k, v in value.items() if isinstance(v, str)}

    async def _decode(self, form: _Form, param: str, max_s: float) -> Frame:
        try:
            return await asyncio.to_thread(
                decode_upload, form.data, name=form.file_name, max_duration_s=max_s
            )
        except ParleyError as exc:
            exc.param = param
            raise


def _required(fields: dict[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value:
        raise ClientError(
            f"Missing required parameter: {name!r}.",
            param=name,
            code=Code.MISSING_REQUIRED_PARAMETER,
        )
    return value
