"""Execution in the 1177 administration system, behind one interface.

- `SimulatedRegistry`: the default in the embedded setup and in tests. Keeps each person's access
  state in the orders database and applies effects idempotently (one `AppliedEffect` row per effect).
- `ManualGateway`: an account administrator performs the change in the 1177 tool and confirms in the
  app; the flow waits for that confirmation.
- `UnavailableGateway`: what a broken integration looks like, for the paper fallback.
A real integration plugs in behind `ExecutionGateway`.

`available()` is a cheap probe that changes nothing; the paper-fallback sweep asks it before handing an
order that fell back to paper back to the digital route. `RO_GATEWAY_DOWN_FLAG` names a file: while it
exists the gateway is unavailable whatever `RO_GATEWAY` says (outage drills, and the tests that need the
system to go down and come back without restarting anything).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.access import AccessState, Effect, EffectKind, ImpossibleEffect, Restriction, apply, effects_for
from models.tables import AppliedEffect, Order, RegistryPerson


class GatewayUnavailable(RuntimeError):
    """The execution system cannot be reached; retry, then fall back to paper."""


class ExecutionRefused(RuntimeError):
    """The registry refuses the effect (e.g. access for a blocked guardian)."""


class ExecutionGateway(Protocol):
    manual: bool

    def apply(self, s: Session, order: Order) -> str:
        """Apply the order's effects; return the system's reference. Must be idempotent per order."""
        ...

    def available(self) -> bool:
        """Whether the execution system answers now. Cheap, changes nothing, never raises."""
        ...


def access_state(s: Session, pnr: str) -> AccessState:
    p = s.get(RegistryPerson, pnr)
    if p is None:
        return AccessState()
    seal = _restriction(p.sealed_by_initiative, p.sealed_by_region, p.sealed_by_order)
    lock = _restriction(p.locked_by_initiative, p.locked_by_region, p.locked_by_order)
    return AccessState(seal=seal, lock=lock, blocked_guardians=frozenset(p.blocked_guardians or []),
                       minor_access=frozenset(p.minor_access or []))


def _restriction(initiative: str | None, region: str | None, order: str | None) -> Restriction | None:
    if initiative == "patient":
        return Restriction("patient", region or "", order or "")
    if initiative == "care":
        return Restriction("care", region or "", order or "")
    return None


def _store(p: RegistryPerson, state: AccessState) -> None:
    p.sealed_by_initiative = state.seal.initiative if state.seal else None
    p.sealed_by_region = state.seal.region if state.seal else None
    p.sealed_by_order = state.seal.order_reference if state.seal else None
    p.locked_by_initiative = state.lock.initiative if state.lock else None
    p.locked_by_region = state.lock.region if state.lock else None
    p.locked_by_order = state.lock.order_reference if state.lock else None
    p.blocked_guardians = sorted(state.blocked_guardians)
    p.minor_access = sorted(state.minor_access)


def order_effects(order: Order) -> list[Effect]:
    return effects_for(order.order_type, list(order.actions or []), order.guardian_pnr,
                       order.minor_grant, order.minor_recipient)


class SimulatedRegistry:
    manual = False

    def available(self) -> bool:
        return True  # it lives in the orders database

    def apply(self, s: Session, order: Order) -> str:
        system_ref = f"SIM-{order.reference}"
        person = s.get(RegistryPerson, order.patient_pnr)
        if person is None:
            person = RegistryPerson(pnr=order.patient_pnr, blocked_guardians=[], minor_access=[])
            s.add(person)
            s.flush()
        done = {(a.effect, a.target) for a in s.scalars(
            select(AppliedEffect).where(AppliedEffect.order_reference == order.reference))}
        state = access_state(s, order.patient_pnr)
        restriction = Restriction(order.initiative, order.region, order.reference)  # type: ignore[arg-type]
        for effect in order_effects(order):
            key = (effect.kind.value, effect.target or "")
            if key in done:
                continue
            try:
                state = apply(state, effect, restriction)
            except ImpossibleEffect as exc:
                raise ExecutionRefused(str(exc)) from exc
            s.add(AppliedEffect(order_reference=order.reference, effect=effect.kind.value,
                                target=effect.target or "", system_reference=system_ref, at=datetime.now(UTC)))
        _store(person, state)
        return system_ref


class ManualGateway:
    manual = True

    def available(self) -> bool:
        return True  # an account administrator with the 1177 administration tool

    def apply(self, s: Session, order: Order) -> str:  # pragma: no cover - the flow waits for a person instead
        raise RuntimeError("manual execution is confirmed by an account administrator")


class UnavailableGateway:
    manual = False

    def available(self) -> bool:
        return False

    def apply(self, s: Session, order: Order) -> str:
        raise GatewayUnavailable("1177 administration system unreachable")


def gateway(kind: str | None = None) -> ExecutionGateway:
    from tasks.settings import settings
    flag = settings().gateway_down_flag
    if flag is not None and flag.exists():
        return UnavailableGateway()
    kind = kind or settings().gateway
    gateways: dict[str, type[SimulatedRegistry | ManualGateway | UnavailableGateway]] = {
        "simulated": SimulatedRegistry, "manual": ManualGateway, "down": UnavailableGateway}
    return gateways[kind]()


__all__ = ["EffectKind", "ExecutionGateway", "GatewayUnavailable", "SimulatedRegistry", "ManualGateway",
           "UnavailableGateway", "access_state", "gateway"]
