"""The one exception tree of parley.

Every error parley raises on purpose derives from :class:`ParleyError` and carries the wire
``code`` that the Realtime and REST layers put in the OpenAI error shape, plus the ``param`` it
concerns when there is one. Errors are split by who is at fault::

    ParleyError                      code
    ├── ClientError                  invalid_request_error  (the caller sent something wrong)
    │   ├── BadAudioError            invalid_audio          (undecodable, wrong format, empty)
    │   ├── SilentAudioError         no_speech              (readable audio with no speech in it)
    │   ├── InputTooLargeError       input_too_large        (text or message over a limit)
    │   └── ConfigError              invalid_config         (a setting that cannot be honoured)
    ├── EngineError                  engine_error           (a model or backend failed)
    │   └── EngineUnavailableError   engine_unavailable     (could not be loaded or reached)
    └── RequestAborted               request_aborted        (its session was interrupted;
                                                             parley.engines.batching)

A client error is never retried and never fails over; an engine error may be.
"""

from __future__ import annotations

__all__ = [
    "BadAudioError",
    "ClientError",
    "ConfigError",
    "EngineError",
    "EngineUnavailableError",
    "InputTooLargeError",
    "ParleyError",
    "SilentAudioError",
]


class ParleyError(Exception):
    """Root of every error parley raises on purpose."""

    code: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class ClientError(ParleyError):
    """The caller sent something parley cannot accept."""

    code = "invalid_request_error"


class BadAudioError(ClientError):
    """Audio that cannot be decoded, is in the wrong format, or is empty."""

    code = "invalid_audio"


class SilentAudioError(ClientError):
    """Audio that decodes but holds no speech."""

    code = "no_speech"


class InputTooLargeError(ClientError):
    """Text or a message beyond a configured limit."""

    code = "input_too_large"


class ConfigError(ClientError):
    """A setting that cannot be honoured (unknown engine, bad value)."""

    code = "invalid_config"


class EngineError(ParleyError):
    """A model or backend failed while serving a request."""

    code = "engine_error"


class EngineUnavailableError(EngineError):
    """An engine could not be loaded or reached."""

    code = "engine_unavailable"
