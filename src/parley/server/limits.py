"""Per-key limits as every door meets them: requests per minute and concurrent sessions, kept in
this process (one replica) or shared by every replica through Redis (``server.redis_url``).

:class:`Gate` is the one place the server asks. With Redis, a limit holds across replicas
together (:mod:`parley.store.shared`); when Redis cannot be reached, new work is refused with
503 (:class:`~parley.errors.OverloadedError`) and sessions already running carry on, since they
need Redis only for heartbeats.
"""

from __future__ import annotations

import logging

from parley.errors import Code, OverloadedError, RateLimitError
from parley.ids import new_id
from parley.server.auth import Limiter
from parley.store.keys import ApiKey
from parley.store.shared import SharedState, SharedStateUnavailable

__all__ = ["Gate", "shared_unavailable"]

log = logging.getLogger("parley.server")


def shared_unavailable() -> OverloadedError:
    return OverloadedError(
        "This gateway cannot reach the state it shares with the others (Redis): it takes no "
        "new sessions until it can. Try again, or another gateway.",
        code=Code.SERVER_OVERLOADED,
    )


class Gate:
    """Request rates and session counts per key, in process or shared (``shared``)."""

    def __init__(self, limiter: Limiter | None = None, shared: SharedState | None = None) -> None:
        self.limiter = limiter or Limiter()
        self.shared = shared
        # The last window read from Redis per key, for rate_limits.updated (which must not wait).
        self._remaining: dict[str, tuple[int, float]] = {}

    async def request(self, key: ApiKey | None) -> tuple[bool, int | None, float]:
        """Count one request of ``key``: (allowed, remaining, seconds until the window frees
        one). Raises :class:`OverloadedError` when the shared state is unreachable."""
        if self.shared is None or key is None or key.limits.requests_per_minute is None:
            return self.limiter.request(key)
        limit = key.limits.requests_per_minute
        try:
            allowed, remaining, reset = await self.shared.request(key.id, limit)
        except SharedStateUnavailable:
            log.warning("shared state unreachable: refusing a request of key %s", key.id)
            raise shared_unavailable() from None
        self._remaining[key.id] = (remaining, reset)
        return allowed, remaining, reset

    def remaining(self, key: ApiKey | None) -> tuple[int | None, float]:
        if self.shared is None or key is None or key.limits.requests_per_minute is None:
            return self.limiter.remaining(key)
        remaining, reset = self._remaining.get(key.id, (key.limits.requests_per_minute, 0.0))
        return remaining, reset

    async def open_session(self, key: ApiKey | None, tenant: str) -> str:
        """Admit a session of ``key``: its admission id, for :meth:`close_session`. Raises
        :class:`RateLimitError` past the key's limit, :class:`OverloadedError` when the shared
        state is unreachable."""
        limit = key.limits.max_sessions if key is not None else None
        admission = new_id("adm")
        if self.shared is None:
            if not self.limiter.open_session(key):
                raise _too_many(limit)
            return admission
        try:
            opened = await self.shared.open_session(
                admission, key.id if key is not None else "", tenant, limit
            )
        except SharedStateUnavailable:
            log.warning("shared state unreachable: refusing a new session")
            raise shared_unavailable() from None
        if not opened:
            raise _too_many(limit)
        return admission

    async def close_session(self, key: ApiKey | None, admission: str) -> None:
        if self.shared is None:
            self.limiter.close_session(key)
            return
        try:
            await self.shared.close_session(admission)
        except SharedStateUnavailable:  # it expires by itself: heartbeats stopped
            log.warning("shared state unreachable: session %s expires instead", admission)


def _too_many(limit: int | None) -> RateLimitError:
    return RateLimitError(f"Too many concurrent Realtime sessions for this key (limit {limit}).")
