"""Routing: pick an engine chain for a request under policy, fail over, circuit breakers.

The policy file (YAML, docs/policy.md: :mod:`.policy`) names engine instances, prices and routes;
:func:`decide` picks a route for each turn, a pure function of (policy, request), looking for
personal data with :mod:`.pii`; :mod:`.build` builds the instances; :mod:`.failover` runs a
chain within the turn.
"""

from parley.routing.build import build_policy_engines
from parley.routing.decide import DEFAULT_ROUTE, Decision, decide
from parley.routing.pii import PII_KINDS, Finding, find_pii
from parley.routing.policy import (
    EngineSpec,
    Failover,
    Match,
    Policy,
    PolicyError,
    Route,
    Targets,
    check_policy,
    load_policy,
)

__all__ = [
    "DEFAULT_ROUTE",
    "PII_KINDS",
    "Decision",
    "EngineSpec",
    "Failover",
    "Finding",
    "Match",
    "Policy",
    "PolicyError",
    "Route",
    "Targets",
    "build_policy_engines",
    "check_policy",
    "decide",
    "find_pii",
    "load_policy",
]
