"""``POST /v1/audio/watermark/detect``: is this recording marked by this server, and for whom?

Any key may ask whether a file carries the server's watermark (detected, score, p-value); the
payload (tenant, response, time) is answered only to a caller of the tenant the mark belongs to,
so one tenant cannot learn another's response ids. It must not hold the key's bytes itself: it
asks ``key_of`` per request (None: watermarking is off, a 404-free answer of nothing found).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from parley.audio.containers import decode_upload
from parley.server.auth import principal_of
from parley.server.http_streams import read_upload
from parley.server.openai_errors import guarded
from parley.trust.watermark import Detection, WatermarkKey, detect

__all__ = ["MAX_DETECT_S", "detection_body", "watermark_route"]

MAX_DETECT_S = 600.0  # a detection needs seconds, not hours
MAX_DETECT_BYTES = 100 * 1024 * 1024  # 600 s of 16-bit 48 kHz stereo is 115 MB: wav beyond


def detection_body(found: Detection, mark: dict[str, Any] | None) -> dict[str, Any]:
    """The answer's shape, shared with ``parley watermark detect --json``."""
    body = found.as_dict()
    body["payload"] = mark
    return body


def watermark_route(
    key_of: Callable[[], WatermarkKey | None], resolve: Callable[[int], dict[str, Any] | None]
) -> Route:
    """The route; ``resolve`` maps a payload id to ``{"tenant", "response_id", "time"}``."""

    async def detect_endpoint(request: Request) -> Response:
        upload = await read_upload(request, "file", MAX_DETECT_BYTES)
        audio = await asyncio.to_thread(
            decode_upload, upload.data, name=upload.name, max_duration_s=MAX_DETECT_S
        )
        key = key_of()
        if key is None:
            return JSONResponse({"detected": False, "score": 0.0, "p_value": 1.0, "payload": None})
        found = await asyncio.to_thread(detect, key, audio)
        mark = None
        if found.payload is not None:
            resolved = await asyncio.to_thread(resolve, found.payload)
            caller = principal_of(request.scope).tenant
            if resolved is not None and resolved.get("tenant") == caller:
                mark = resolved
        return JSONResponse(detection_body(found, mark))

    return Route("/v1/audio/watermark/detect", guarded(detect_endpoint), methods=["POST"])
