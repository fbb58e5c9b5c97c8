"""The one error module of parley: the exception tree, its wire codes, and the one body builder.

Every error parley raises on purpose derives from :class:`ParleyError`. Each class fixes three
things the wire needs: the OpenAI error ``type``, the HTTP ``status`` a REST endpoint answers
with, and a default :class:`Code`; an instance may carry a more precise code, the ``param`` it
concerns and the client's ``event_id``. Errors are split by who is at fault::

    ParleyError                      type             status  default code
    ├── ClientError                  invalid_request  400     invalid_value
    │   ├── ProtocolError            invalid_request  400     (given: invalid_json, ...)
    │   ├── BadAudioError            invalid_request  400     invalid_audio
    │   ├── SilentAudioError         invalid_request  400     no_speech
    │   ├── InputTooLargeError       invalid_request  400     input_too_large
    │   │   └── PayloadTooLargeError invalid_request  413     request_too_large
    │   ├── ConfigError              invalid_request  400     invalid_config
    │   ├── NotFoundError            invalid_request  404     not_found
    │   ├── AuthenticationError      invalid_request  401     invalid_api_key
    │   ├── PermissionDeniedError    invalid_request  403     permission_denied
    │   ├── ConflictError            invalid_request  409     conflict
    │   ├── RateLimitError           requests         429     rate_limit_exceeded
    │   ├── InsufficientQuotaError   insufficient_quota 429   insufficient_quota
    │   └── SessionClosedError       invalid_request  400     (given: session_expired, ...)
    ├── EngineError                  server_error     500     engine_error
    │   ├── EngineUnavailableError   server_error     503     engine_unavailable
    │   └── OverloadedError          server_error     503     server_overloaded
    └── RequestAborted               server_error     500     request_aborted
                                     (parley.engines.batching: its session was interrupted)

A client's fault is never typed ``server_error``; an engine error may be retried or fail over, a
client error never is. :func:`error_body` is the one builder of the OpenAI error object, used by
the Realtime ``error`` event (:func:`error_event`) and every REST error response alike, and
:func:`as_parley_error` is the one place where a foreign exception (a pydantic validation error
from deep inside, an engine's bug) becomes a parley error, keeping its cause.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from parley.ids import new_event_id

__all__ = [
    "AuthenticationError",
    "BadAudioError",
    "ClientError",
    "Code",
    "ConfigError",
    "EngineError",
    "EngineUnavailableError",
    "InputTooLargeError",
    "InsufficientQuotaError",
    "NotFoundError",
    "OverloadedError",
    "ParleyError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RateLimitError",
    "SessionClosedError",
    "SilentAudioError",
    "as_parley_error",
    "dotted_param",
    "error_body",
    "error_event",
]


class Code(StrEnum):
    """Every ``code`` parley puts in an error; OpenAI's own where OpenAI has one."""

    # The client's event or body cannot be read.
    INVALID_JSON = "invalid_json"
    INVALID_EVENT = "invalid_event"
    INVALID_TYPE = "invalid_type"
    INVALID_VALUE = "invalid_value"
    MISSING_REQUIRED_PARAMETER = "missing_required_parameter"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    MESSAGE_TOO_LARGE = "message_too_large"
    REQUEST_TOO_LARGE = "request_too_large"
    INVALID_CONTENT_TYPE = "invalid_content_type"
    # Audio and text the client sent.
    INVALID_AUDIO = "invalid_audio"
    AUDIO_TOO_LONG = "audio_too_long"
    AUDIO_TOO_FAST = "audio_too_fast"
    NO_SPEECH = "no_speech"
    INPUT_TOO_LARGE = "input_too_large"
    INVALID_CONFIG = "invalid_config"
    # Conversation state.
    ITEM_NOT_FOUND = "item_not_found"
    CONVERSATION_ALREADY_HAS_ACTIVE_RESPONSE = "conversation_already_has_active_response"
    RESPONSE_CANCEL_NOT_ACTIVE = "response_cancel_not_active"
    INPUT_AUDIO_BUFFER_COMMIT_EMPTY = "input_audio_buffer_commit_empty"
    IMAGE_INPUT_NOT_SUPPORTED = "image_input_not_supported"
    IMAGE_NOT_SUPPORTED = "image_not_supported"
    UNSUPPORTED_CONTENT = "unsupported_content"
    UNSUPPORTED_SESSION_TYPE = "unsupported_session_type"
    # Prompts, keys, tenants, models.
    INVALID_PROMPT = "invalid_prompt"
    PROMPT_VERSION_EXISTS = "prompt_version_exists"
    TENANT_NOT_FOUND = "tenant_not_found"
    KEY_NOT_FOUND = "key_not_found"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    AUTH_DISABLED = "auth_disabled"
    PERMISSION_DENIED = "permission_denied"
    CONFLICT = "conflict"
    INVALID_API_KEY = "invalid_api_key"
    MISSING_API_KEY = "missing_api_key"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    INSUFFICIENT_QUOTA = "insufficient_quota"  # past a hard budget (OpenAI's own code)
    # Voice consents and custom voices.
    CONSENT_PHRASE_MISMATCH = "consent_phrase_mismatch"
    SPEAKER_MISMATCH = "speaker_mismatch"
    VOICE_LIMIT_REACHED = "voice_limit_reached"
    SPEAKER_VERIFICATION_UNAVAILABLE = "speaker_verification_unavailable"
    VOICE_ENGINE_UNAVAILABLE = "voice_engine_unavailable"
    # The session ends.
    SESSION_EXPIRED = "session_expired"
    SESSION_REVOKED = "session_revoked"
    SLOW_CONSUMER = "slow_consumer"
    # The server's side.
    SERVER_ERROR = "server_error"
    ENGINE_ERROR = "engine_error"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    SERVER_OVERLOADED = "server_overloaded"
    REQUEST_ABORTED = "request_aborted"


class ParleyError(Exception):
    """Root of every error parley raises on purpose."""

    type: str = "server_error"
    status: int = 500
    code: str = Code.SERVER_ERROR

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.event_id = event_id
        if code is not None:
            self.code = code


class ClientError(ParleyError):
    """The caller sent something parley cannot accept."""

    type = "invalid_request_error"
    status = 400
    code = Code.INVALID_VALUE


class ProtocolError(ClientError):
    """A client event or body that parley cannot read: bad JSON, unknown type, a field of the
    wrong kind or out of range. ``param`` is the dotted path of the bad field
    (``session.tools[0].name``) and ``event_id`` the client's own id for the event."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, event_id=event_id)


class BadAudioError(ClientError):
    """Audio that cannot be decoded, is in the wrong format, or is empty."""

    code = Code.INVALID_AUDIO


class SilentAudioError(ClientError):
    """Audio that decodes but holds no speech."""

    code = Code.NO_SPEECH


class InputTooLargeError(ClientError):
    """Text or a message beyond a configured limit."""

    code = Code.INPUT_TOO_LARGE


class PayloadTooLargeError(InputTooLargeError):
    """A request body or a recording beyond what the server takes (HTTP 413)."""

    status = 413
    code = Code.REQUEST_TOO_LARGE


class ConfigError(ClientError):
    """A setting that cannot be honoured (unknown engine, bad value)."""

    code = Code.INVALID_CONFIG


class NotFoundError(ClientError):
    """Something the request names does not exist (an item, a model, a key)."""

    status = 404
    code = Code.NOT_FOUND


class AuthenticationError(ClientError):
    """No key, a wrong key, or a revoked one."""

    status = 401
    code = Code.INVALID_API_KEY


class PermissionDeniedError(ClientError):
    """A known caller that may not do this (the web page's demo key from afar)."""

    status = 403
    code = Code.PERMISSION_DENIED


class ConflictError(ClientError):
    """What the request names is elsewhere or in another state (a call on another replica)."""

    status = 409
    code = Code.CONFLICT


class RateLimitError(ClientError):
    """Over a per-key limit (requests per minute, concurrent sessions)."""

    type = "requests"
    status = 429
    code = Code.RATE_LIMIT_EXCEEDED


class InsufficientQuotaError(ClientError):
    """Past a hard budget of the tenant or the key: no engine is called (OpenAI's shape)."""

    type = "insufficient_quota"
    status = 429
    code = Code.INSUFFICIENT_QUOTA


class EngineError(ParleyError):
    """A model or backend failed while serving a request."""

    code = Code.ENGINE_ERROR


class EngineUnavailableError(EngineError):
    """An engine could not be loaded or reached."""

    status = 503
    code = Code.ENGINE_UNAVAILABLE


class OverloadedError(EngineError):
    """The server is at capacity for this kind of work; try again shortly."""

    status = 503
    code = Code.SERVER_OVERLOADED


class SessionClosedError(ClientError):
    """The server ends a session for what its client or key did: it outlived its limit, its
    key was revoked, its client stopped reading (OpenAI types ``session_expired`` so too)."""


def dotted_param(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """A pydantic error location as OpenAI names a parameter: ``session.tools[0].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def as_parley_error(exc: BaseException, *, param_prefix: str = "") -> ParleyError:
    """``exc`` as a parley error: itself, a validation failure as the client's fault naming the
    field, anything else as an engine fault whose ``__cause__`` is ``exc``."""
    if isinstance(exc, ParleyError):
        return exc
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        param = dotted_param(tuple(first["loc"]))
        if param_prefix:
            param = f"{param_prefix}.{param}" if param else param_prefix
        message = str(first["msg"]).removeprefix("Value error, ")
        error: ParleyError = ClientError(
            f"Invalid value for '{param}': {message}." if param else f"{message}.",
            param=param or None,
            code=Code.MISSING_REQUIRED_PARAMETER if first["type"] == "missing" else None,
        )
    else:
        error = EngineError(f"internal error: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def error_body(exc: ParleyError) -> dict[str, Any]:
    """The OpenAI error object: ``{"type", "code", "message", "param"}``."""
    return {
        "type": exc.type,
        "code": str(exc.code),
        "message": exc.message,
        "param": exc.param,
    }


def error_event(exc: ParleyError, event_id: str | None = None) -> dict[str, Any]:
    """The Realtime ``error`` server event for ``exc``, about the client event ``event_id``
    (the error's own ``event_id`` when not given)."""
    return {
        "type": "error",
        "event_id": new_event_id(),
        "error": {**error_body(exc), "event_id": event_id or exc.event_id},
    }
