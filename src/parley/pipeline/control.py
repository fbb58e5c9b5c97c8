"""The control plane as the pipeline meets it: which engines answer, what it costs, may it run.

One :class:`ControlPlane` per process holds the routing policy, the engine instances it names,
the circuit breaker, the price table, the ledger and the budgets. Each session (and each REST
request) gets a :class:`CallerControl` for its caller (tenant, key, session), through which
every engine call of that caller goes:

- **Route.** Before a response, the user text the session has not yet scanned goes through
  :func:`parley.routing.decide`; the route's chains replace the configured engines for that
  response. A restricted (sticky) route, once taken, holds for the rest of the session: the
  history it sends on holds the data. The route and the engines are logged and recorded; the
  PII never is (only its kinds).
- **Reserve, call, settle.** Before each engine call an upper bound of its cost is reserved
  against every budget of the caller (:meth:`parley.ledger.Budgets.reserve`, atomic in the
  database), so that concurrent responses can never spend past a hard limit together. The
  bounds: an LLM call's input tokens are counted as UTF-8 bytes (a byte-level BPE token is at
  least one byte) plus framing, its output as ``max_tokens``, at the dearest engine of the
  chain; a TTS call is a clause, whose characters are known; ASR audio is reserved 30 s at a
  time while it is fed to the recogniser. After the call the true cost is settled and the rest
  released.
- **Record.** Each attempt of a chain (:class:`parley.routing.failover.Attempt`) becomes a
  :class:`parley.ledger.UsageRecord`; a response's records are written in one transaction
  before its ``response.done`` goes out, so a completed turn survives ``kill -9``.

Without a policy the configured engines serve alone (no timeout, no failover), prices are all
zero, and usage is still recorded when a ledger is given.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from parley.engines.base import (
    ChatRequest,
    ImagePart,
    LLMEvent,
)
from parley.engines.registry import Engines
from parley.errors import InsufficientQuotaError
from parley.ids import new_id
from parley.ledger import Budget, Budgets, Ledger, PriceTable, Reservation, Units, UsageRecord
from parley.pipeline.events import BudgetWarning
from parley.pipeline.metered import MeteredASR, MeteredLLM, MeteredTTS
from parley.routing import Policy, decide
from parley.routing.failover import Attempt, Breaker, LLMChain
from parley.trust.audit import AuditLog

__all__ = ["BudgetWarning", "Caller", "CallerControl", "ControlPlane", "ResponsePlan"]

log = logging.getLogger("parley.control")

Stage = Literal["asr", "llm", "tts"]
# An image in a prompt is reserved at this many input tokens (OpenAI's high-detail tiles).
_IMAGE_BOUND_TOKENS = 1500
_MESSAGE_BOUND_TOKENS = 8
_DEFAULT_MAX_OUTPUT = 4096
_SCANNED_ROLES = ("user", "tool")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who pays for a call."""

    tenant: str = ""
    key_id: str = ""
    session_id: str = ""


class ControlPlane:
    """The process's policy, engines by name, breaker, prices, ledger and budgets."""

    def __init__(
        self,
        engines: Engines,
        *,
        policy: Policy | None = None,
        named: Mapping[str, Any] | None = None,
        ledger: Ledger | None = None,
        budgets: Budgets | None = None,
        on_record: Callable[[UsageRecord], None] | None = None,
        on_budget: Callable[[Budget], None] | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.engines = engines
        self.audit = audit
        self.on_budget = on_budget
        self.policy = policy
        self.named = dict(named or {})
        self.ledger = ledger
        self.budgets = budgets
        self.on_record = on_record
        if policy is not None:
            failover = policy.failover
            self.breaker = Breaker(failover.breaker.failures, failover.breaker.open_s)
            self.timeout_s: float | None = failover.first_token_timeout_ms / 1000.0
            configured = {k: getattr(engines, k).name for k in ("asr", "llm", "tts")}
            self.prices = PriceTable(policy.prices, configured=configured)
        else:
            self.breaker = Breaker()
            self.timeout_s = None
            self.prices = PriceTable()

    def for_caller(
        self, caller: Caller, *, warn: Callable[[BudgetWarning], None] | None = None
    ) -> CallerControl:
        return CallerControl(self, caller, warn)

    def timeout_for(self, chain: Sequence[tuple[str, Any]]) -> float | None:
        """The failover timeout of a chain: ``first_token_timeout_ms`` where there is another
        engine to fail over to; none for an engine alone (a timeout would only turn a slow
        answer into no answer)."""
        return self.timeout_s if len(chain) > 1 else None

    def chain(self, stage: Stage, names: Sequence[str]) -> list[tuple[str, Any]]:
        """``(name, engine)`` for each instance name; none: the configured engine alone."""
        if not names:
            engine = getattr(self.engines, stage)
            return [(engine.name, engine)]
        return [(name, self.named[name]) for name in names]

    def model_of(self, stage: Stage, engine: str) -> str:
        spec = self.policy.engines.get(engine) if self.policy is not None else None
        if spec is not None and spec.model:
            return spec.model
        inner = self.named.get(engine) or getattr(self.engines, stage)
        return str(getattr(inner, "model", "") or "")

    def audit_append(self, kind: str, *, tenant: str = "", **data: Any) -> None:
        """An audit record; a failure is logged and does not end the caller's call."""
        if self.audit is None:
            return
        try:
            self.audit.append(kind, tenant=tenant, **data)
        except Exception:
            log.exception("audit append failed: %s record lost", kind)

    def write(self, records: Sequence[UsageRecord]) -> None:
        """Write ``records`` to the ledger (durable when this returns) and report them. A
        database failure is logged and does not end the response."""
        if not records:
            return
        if self.ledger is not None:
            try:
                self.ledger.write(records)
            except Exception:  # the caller's answer matters more than its bill
                log.exception("ledger write failed; %d usage records lost", len(records))
        if self.on_record is not None:
            for record in records:
                self.on_record(record)


class CallerControl:
    """One caller's view of the control plane: routes, reservations and records."""

    def __init__(
        self,
        plane: ControlPlane,
        caller: Caller,
        warn: Callable[[BudgetWarning], None] | None = None,
    ) -> None:
        self.plane = plane
        self.caller = caller
        self._warn = warn
        self._warned = False
        self.sticky: str | None = None
        self.language: str | None = None  # the session's language, for routes on it
        self.pii_kinds: tuple[str, ...] = ()  # found in the last routed turn (kinds only)
        self._scanned: dict[str, str] = {}
        self.route = "default" if plane.policy is not None else ""

    # --- budgets -------------------------------------------------------------------------------

    def refusal(
        self, request: ChatRequest | None = None, texts: Sequence[tuple[str, str]] = ()
    ) -> InsufficientQuotaError | None:
        """The error to answer with if ``request`` (routed on ``texts``) would not fit in a
        hard budget of this caller now; None if it would. A read, not a reservation: the
        reservation when the call starts still decides."""
        budgets = self.plane.budgets
        if budgets is None:
            return None
        need = 0
        if request is not None:
            names = self._route(texts, commit=False).get("llm", ())
            need = self.bound("llm", self.plane.chain("llm", names), request_bound(request))
        for budget in budgets.list(self.caller.tenant):
            if budget.key_id in ("", self.caller.key_id) and budget.remaining_nusd < max(need, 1):
                return _quota_error(budget.key_id)
        return None

    def reserve(self, amount_nusd: int) -> Reservation | None:
        """Hold ``amount_nusd`` against the caller's budgets; raises InsufficientQuotaError."""
        budgets = self.plane.budgets
        if budgets is None:
            return None
        reservation = budgets.reserve(self.caller.tenant, self.caller.key_id, amount_nusd)
        if reservation.soft_crossed and not self._warned:
            self._warned = True
            log.warning(
                "tenant %r (key %s) passed a soft budget limit",
                self.caller.tenant,
                self.caller.key_id or "-",
            )
            if self._warn is not None:
                self._warn(
                    BudgetWarning(
                        self.caller.tenant,
                        self.caller.key_id,
                        "This project has passed the soft limit of its budget.",
                    )
                )
        return reservation

    def settle(self, reservation: Reservation | None, actual_nusd: int) -> None:
        plane = self.plane
        if reservation is None or plane.budgets is None:
            return
        for budget in plane.budgets.settle(reservation, actual_nusd):
            if plane.on_budget is not None:
                plane.on_budget(budget)

    # --- routing -------------------------------------------------------------------------------

    def _route(
        self, texts: Sequence[tuple[str, str]], *, commit: bool = True
    ) -> dict[str, tuple[str, ...]]:
        """Route on the user texts ``(item id, text)`` not scanned before; the chains by stage.
        ``commit``: remember what was scanned and a restricted route taken."""
        policy = self.plane.policy
        if policy is None:
            return {}
        fresh = [text for item_id, text in texts if self._scanned.get(item_id) != text]
        decision = decide(
            policy,
            tenant=self.caller.tenant,
            key_id=self.caller.key_id,
            text="\n".join(fresh),
            sticky_route=self.sticky,
            language=self.language,
        )
        if not commit:
            return dict(decision.chains)
        self._scanned = {item_id: text for item_id, text in texts}
        if decision.sticky:
            self.sticky = decision.route
        self.route = decision.route
        self.pii_kinds = decision.pii_kinds
        log.info(
            "route %s (pii: %s) llm=%s",
            decision.route,
            ",".join(self.pii_kinds) or "none",
            ",".join(decision.chains.get("llm", ())) or self.plane.engines.llm.name,
        )
        return dict(decision.chains)

    # --- engine calls --------------------------------------------------------------------------

    def plan(
        self, request: ChatRequest, texts: Sequence[tuple[str, str]], *, response_id: str = ""
    ) -> ResponsePlan:
        """Route, reserve the LLM call's bound (raises InsufficientQuotaError: then no engine
        is called) and return the response's metered engines."""
        chains = self._route(texts)
        llm = self.plane.chain("llm", chains.get("llm", ()))
        tts = self.plane.chain("tts", chains.get("tts", ()))
        plan = ResponsePlan(self, response_id or new_id("resp"), self.route, llm, tts)
        plan.reserve_llm(request)
        return plan

    async def stream_llm(self, request: ChatRequest) -> AsyncGenerator[LLMEvent, None]:
        """A stateless LLM call (REST): routed on the request's own user messages, reserved at
        its first step, settled and recorded when it ends however it ends."""
        texts = [
            (str(i), m.text) for i, m in enumerate(request.messages) if m.role in _SCANNED_ROLES
        ]
        plan = self.plan(request, texts)
        try:
            async with contextlib.aclosing(plan.llm.stream(request)) as events:
                async for event in events:
                    yield event
        finally:
            plan.close()

    def asr(self) -> MeteredASR:
        """The configured (or routed default) recogniser chain, metered for this caller."""
        policy = self.plane.policy
        names = policy.default.asr or () if policy is not None else ()
        return MeteredASR(self, self.plane.chain("asr", tuple(names)))

    def tts(self, response_id: str = "") -> MeteredTTS:
        policy = self.plane.policy
        names = policy.default.tts or () if policy is not None else ()
        return MeteredTTS(
            self, self.plane.chain("tts", tuple(names)), response_id, [], standalone=True
        )

    def record(
        self,
        attempt: Attempt,
        units: Units,
        *,
        response_id: str = "",
        outcome: str | None = None,
    ) -> UsageRecord:
        plane = self.plane
        return UsageRecord(
            tenant=self.caller.tenant,
            key_id=self.caller.key_id,
            session_id=self.caller.session_id,
            response_id=response_id,
            stage=attempt.stage,
            engine=attempt.engine,
            model=plane.model_of(attempt.stage, attempt.engine),
            route=self.route,
            audio_in_s=units.audio_in_s,
            audio_out_s=units.audio_out_s,
            input_tokens=units.input_tokens,
            output_tokens=units.output_tokens,
            characters=units.characters,
            cost_nusd=plane.prices.cost_nusd(attempt.engine, attempt.stage, units),
            latency_ms=attempt.latency_ms,
            outcome=outcome or attempt.outcome,
        )

    def bound(self, stage: Stage, engines: Sequence[tuple[str, Any]], units: Units) -> int:
        """The dearest engine of the chain's price for ``units``."""
        prices = self.plane.prices
        return max((prices.cost_nusd(name, stage, units) for name, _ in engines), default=0)


def _quota_error(key_id: str) -> InsufficientQuotaError:
    whose = "this API key" if key_id else "this project"
    return InsufficientQuotaError(
        f"You exceeded the budget of {whose}. Raise the limit with 'parley budgets set' or "
        "wait for the next period."
    )


def request_bound(request: ChatRequest) -> Units:
    """An upper bound of a chat request's tokens: input as UTF-8 bytes plus framing and
    images, output as ``max_tokens``."""
    tokens = 0
    for message in request.messages:
        tokens += _MESSAGE_BOUND_TOKENS + len(message.text.encode("utf-8"))
        tokens += sum(len(c.arguments.encode()) + len(c.name) for c in message.tool_calls)
        if not isinstance(message.content, str):
            tokens += _IMAGE_BOUND_TOKENS * sum(isinstance(p, ImagePart) for p in message.content)
    for tool in request.tools:
        tokens += len(tool.name) + len(tool.description.encode()) + len(str(tool.parameters))
    return Units(input_tokens=tokens, output_tokens=request.max_tokens or _DEFAULT_MAX_OUTPUT)


@dataclass(eq=False)
class ResponsePlan:
    """One response's engines, reservations and usage records."""

    control: CallerControl
    response_id: str
    route: str
    llm_chain: list[tuple[str, Any]]
    tts_chain: list[tuple[str, Any]]
    records: list[UsageRecord] = field(default_factory=list)
    _llm_hold: Reservation | None = None
    _closed: bool = False

    def __post_init__(self) -> None:
        plane = self.control.plane
        self.llm = MeteredLLM(
            self,
            LLMChain(
                self.llm_chain,
                plane.breaker,
                first_token_timeout_s=plane.timeout_for(self.llm_chain),
            ),
        )
        self.tts = MeteredTTS(self.control, self.tts_chain, self.response_id, self.records)

    def metered_tts(self, tts: Any) -> MeteredTTS:
        """``tts`` (a custom voice) metered and recorded as this response's TTS."""
        return MeteredTTS(self.control, [(tts.name, tts)], self.response_id, self.records)

    @property
    def engine(self) -> str:
        return self.llm_chain[0][0]

    def reserve_llm(self, request: ChatRequest) -> None:
        bound = self.control.bound("llm", self.llm_chain, request_bound(request))
        self._llm_hold = self.control.reserve(bound)

    def close(self, *, status: str = "completed", mark: int | None = None) -> list[UsageRecord]:
        """Settle what is still held, write the response's records and its audit record
        (once). ``mark``: the watermark payload id its audio carried."""
        if self._closed:
            return []
        self._closed = True
        llm_cost = sum(r.cost_nusd for r in self.records if r.stage == "llm")
        self.control.settle(self._llm_hold, llm_cost)
        plane, caller = self.control.plane, self.control.caller
        plane.write(self.records)
        if plane.audit is not None:
            plane.audit_append(
                "response",
                tenant=caller.tenant,
                key_id=caller.key_id,
                session_id=caller.session_id,
                response_id=self.response_id,
                status=status,
                route=self.route,
                pii=list(self.control.pii_kinds),  # kinds, never values
                engines=[f"{r.stage}:{r.engine}:{r.outcome}" for r in self.records],
                cost_usd=sum(r.cost_nusd for r in self.records) / 1e9,
                watermark=mark,
            )
        return self.records


def texts_of(items: Sequence[Any]) -> list[tuple[str, str]]:
    """``(item id, text)`` of the messages whose data routing looks at: the user's, and tool
    outputs (a tool may return a customer's card number as well as a caller may say it)."""
    return [
        (i.id, i.message.text) for i in items if i.message.role in _SCANNED_ROLES and i.message.text
    ]
