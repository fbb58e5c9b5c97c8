"""Routing: pick an engine chain for a request under policy, fail over, circuit breakers."""
