"""``/openapi.json``: the REST API described from the same pydantic models that validate it.

Request bodies come from the models the handlers parse with (``SpeechRequest``,
``TranscriptionParams``, ``ChatCompletionRequest``), so the document cannot drift from what the
server accepts. Every path but ``/healthz`` requires a Bearer key.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from parley import __version__
from parley.server.chat import ChatCompletionRequest
from parley.server.rest import SpeechRequest, TranscriptionParams

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _errors(*codes: int) -> dict[str, Any]:
    described = {
        400: "Invalid request",
        401: "Missing or invalid API key",
        404: "Not found",
        413: "Request too large",
        429: "Rate limit reached",
    }
    return {
        str(code): {
            "description": described[code],
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
        }
        for code in codes
    }


def openapi_document() -> dict[str, Any]:
    components: dict[str, Any] = {"Error": _ERROR, "Model": _MODEL}
    speech = _schema(SpeechRequest, components)
    chat = _schema(ChatCompletionRequest, components)
    params = TranscriptionParams.model_json_schema(ref_template=_REF)
    components.update(params.pop("$defs", {}))
    form_properties: dict[str, Any] = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "wav, flac, mp3, ogg/opus, webm or m4a",
        },
        **{k: v for k, v in params["properties"].items() if k != "timestamp_granularities"},
        "timestamp_granularities[]": params["properties"]["timestamp_granularities"],
    }
    json_or_sse = {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string"}},
    }
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness and the engines in use",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/v1/audio/speech": {
            "post": {
                "summary": "Speak text (OpenAI audio.speech)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": speech}},
                },
                "responses": {
                    "200": {
                        "description": "Audio as it is synthesised, or SSE events",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 401, 413, 429),
                },
            }
        },
        "/v1/audio/transcriptions": {
            "post": {
                "summary": "Transcribe a recording (OpenAI audio.transcriptions)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": form_properties,
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The transcript in the requested format",
                        "content": {**json_or_sse, "text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 413, 429),
                },
            }
        },
        "/v1/chat/completions": {
            "post": {
                "summary": "Chat with the configured LLM (OpenAI chat.completions)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": chat}},
                },
                "responses": {
                    "200": {
                        "description": "A completion, or chunks as SSE",
                        "content": json_or_sse,
                    },
                    **_errors(400, 401, 413, 429),
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The models (engines) this server offers",
                "responses": {
                    "200": {
                        "description": "A list of models",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["object", "data"],
                                    "properties": {
                                        "object": {"const": "list"},
                                        "data": {
                                            "type": "array",
                                            "items": {"$ref": _REF.format(model="Model")},
                                        },
                                    },
                                }
                            }
                        },
                    },
                    **_errors(401, 429),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "summary": "One model",
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "The model",
                        "content": {
                            "application/json": {"schema": {"$ref": _REF.format(model="Model")}}
                        },
                    },
                    **_errors(401, 404, 429),
                },
            }
        },
        "/v1/realtime/client_secrets": {
            "post": {
                "summary": "An ephemeral key (ek_...) for one Realtime connection",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "expires_after": {
                                        "type": "object",
                                        "properties": {
                                            "anchor": {"const": "created_at"},
                                            "seconds": {
                                                "type": "integer",
                                                "minimum": 10,
                                                "maximum": 7200,
                                            },
                                        },
                                    },
                                    "session": {
                                        "type": "object",
                                        "description": "A Realtime session configuration",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The secret and its session",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["value", "expires_at", "session"],
                                    "properties": {
                                        "value": {"type": "string"},
                                        "expires_at": {"type": "integer"},
                                        "session": {"type": "object"},
                                    },
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 429),
                },
            }
        },
        "/v1/realtime/calls": {
            "post": {
                "summary": "A Realtime session over WebRTC: the SDP answer to an offer",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["sdp"],
                                "properties": {
                                    "sdp": {"type": "string", "description": "The SDP offer"},
                                    "session": {
                                        "type": "string",
                                        "description": "A Realtime session configuration (JSON)",
                                    },
                                },
                            }
                        },
                        "application/sdp": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "201": {
                        "description": "The SDP answer; Location names the call",
                        "content": {"application/sdp": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 413, 429),
                },
            }
        },
        "/v1/realtime/calls/{call_id}/hangup": {
            "post": {
                "summary": "End a WebRTC call",
                "parameters": [
                    {
                        "name": "call_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {"200": {"description": "The call is ending"}, **_errors(401, 404)},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "parley",
            "version": __version__,
            "description": "OpenAI-compatible audio, chat and Realtime endpoints. The "
            "Realtime WebSocket is at /v1/realtime.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
