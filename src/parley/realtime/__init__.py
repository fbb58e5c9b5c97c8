"""The OpenAI Realtime protocol: typed wire events (GA and beta names) and the sans-I/O session."""

from parley.realtime.commands import Command
from parley.realtime.session import Output, RealtimeSession
from parley.realtime.wire import MAX_EVENT_BYTES, ClientEvent, ProtocolError, parse_client_event

__all__ = [
    "MAX_EVENT_BYTES",
    "ClientEvent",
    "Command",
    "Output",
    "ProtocolError",
    "RealtimeSession",
    "parse_client_event",
]
