"""Adapters that carry one Realtime session over a wire: WebSocket, WebRTC (aiortc). Each only
moves bytes and events; none holds protocol state."""
