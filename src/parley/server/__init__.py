"""The ASGI server: the Realtime WebSocket and health endpoint over the pipeline. Thin."""

from parley.server.app import AppState, create_app

__all__ = ["AppState", "create_app"]
