"""Choosing a route for one turn: a pure function of the policy and the request.

:func:`decide` looks at the tenant, the API key, the language and the personal data in the
user's text, and returns a :class:`Decision`: the route, the rule that matched, the PII found
(masked) and the engine chain per stage. It does no I/O, keeps no state (a session passes the
sticky route it took before) and never builds an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parley.routing.pii import Finding, find_pii
from parley.routing.policy import Policy, Route

__all__ = ["DEFAULT_ROUTE", "Decision", "decide", "pii_kinds_of"]

# The route name of a decision that no route matched.
DEFAULT_ROUTE = "default"


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one turn goes. ``chains`` maps each stage to instance names in failover order; an
    empty chain means the configured engine of that stage. ``sticky``: the session keeps this
    route for the rest of its turns (pass ``route`` as ``sticky_route`` next time)."""

    route: str
    rule: dict[str, Any] | None
    findings: tuple[Finding, ...]
    chains: dict[str, tuple[str, ...]]
    sticky: bool

    @property
    def pii_kinds(self) -> tuple[str, ...]:
        """The kinds found, each once, in the order first found: what may be logged."""
        return tuple(dict.fromkeys(f.kind for f in self.findings))


def pii_kinds_of(policy: Policy) -> frozenset[str]:
    """The PII kinds some route keys on: the only kinds :func:`decide` looks for."""
    return frozenset(kind for route in policy.routes for kind in route.when.pii or ())


def _decision(route: Route, findings: tuple[Finding, ...]) -> Decision:
    return Decision(
        route=route.name,
        rule=route.when.model_dump(exclude_none=True),
        findings=findings,
        chains=route.chains(),
        sticky=route.is_sticky,
    )


def _matches(route: Route, tenant: str, key_id: str, language: str | None) -> bool:
    """The conditions other than PII."""
    when = route.when
    return (
        (when.tenant is None or tenant in when.tenant)
        and (when.key_id is None or key_id in when.key_id)
        and (when.language is None or (language is not None and language in when.language))
    )


def decide(
    policy: Policy,
    *,
    tenant: str,
    text: str,
    sticky_route: str | None = None,
    key_id: str = "",
    language: str | None = None,
) -> Decision:
    """The route of one turn whose user said or wrote ``text``: the first route whose every
    condition holds, else the default.

    ``sticky_route``: a sticky route this session took before; it is taken again whatever the
    text (the history holds the data that sent it there). A name the policy no longer has is
    ignored. The text is searched only for the PII kinds some route keys on.
    """
    kinds = pii_kinds_of(policy)
    findings = tuple(find_pii(text, kinds)) if kinds else ()
    if sticky_route is not None:
        route = policy.route(sticky_route)
        if route is not None:
            decision = _decision(route, findings)
            return Decision(decision.route, decision.rule, findings, decision.chains, sticky=True)
    found = {f.kind for f in findings}
    for route in policy.routes:
        if not _matches(route, tenant, key_id, language):
            continue
        if route.when.pii is not None and found.isdisjoint(route.when.pii):
            continue
        return _decision(route, findings)
    return Decision(
        route=DEFAULT_ROUTE,
        rule=None,
        findings=findings,
        chains=policy.default.chains(),
        sticky=False,
    )
