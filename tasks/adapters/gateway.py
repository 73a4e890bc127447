"""Execution in the 1177 administration system, behind one interface.

- `SimulatedRegistry`: the default in the embedded setup and in tests. Keeps each person's access
  state in the orders database and applies effects idempotently (one `AppliedEffect` row per effect).
- `ManualGateway`: an account administrator performs the change in the 1177 tool and confirms in the
  app; the flow waits for that confirmation, which records the effects the same way (`record_effects`),
  so our record of what is in force means the same with either gateway.
- `UnavailableGateway`: what a broken integration looks like, for the paper fallback.
A real integration plugs in behind `ExecutionGateway`.

`available()` is a cheap probe that changes nothing; the paper-fallback sweep asks it before handing an
order that fell back to paper back to the digital route. `RO_GATEWAY_DOWN_FLAG` names a file: while it
exists the gateway is unavailable whatever `RO_GATEWAY` says (outage drills, and the tests that need the
system to go down and come back without restarting anything).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
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

    def apply(self, s: Session, order: Order, at: datetime | None = None) -> str:
        """Apply the order's effects at `at`; return the system's reference. Must be idempotent per order."""
        ...

    def available(self) -> bool:
        """Whether the execution system answers now. Cheap, changes nothing, never raises."""
        ...


def access_state(s: Session, pnr: str) -> AccessState:
    """What our registry records as in force; a person without a row has nothing in force."""
    p = s.get(RegistryPerson, pnr)
    return AccessState() if p is None else _state(p)


def known_access_state(s: Session, pnr: str, *, manual: bool) -> AccessState | None:
    """The state the rules may rely on, or None when it is unknown. With the manual gateway a person we have
    never recorded may still have restrictions made before this system or directly in the 1177 tool: then
    the account administrator checks there. The simulated registry is complete: no row, nothing in force."""
    p = s.get(RegistryPerson, pnr)
    if p is None:
        return None if manual else AccessState()
    return _state(p)


def _state(p: RegistryPerson) -> AccessState:
    seal = _restriction(p.sealed_by_initiative, p.sealed_by_region, p.sealed_by_order)
    lock = _restriction(p.locked_by_initiative, p.locked_by_region, p.locked_by_order)
    return AccessState(seal=seal, lock=lock, guardian_blocks=_entries(p.blocked_guardians),
                       minor_grants=_entries(p.minor_access))


def _restriction(initiative: str | None, region: str | None, order: str | None) -> Restriction | None:
    if initiative == "patient":
        return Restriction("patient", region or "", order or "")
    if initiative == "care":
        return Restriction("care", region or "", order or "")
    return None


def _entries(rows: list[dict[str, str]] | None) -> dict[str, Restriction]:
    out: dict[str, Restriction] = {}
    for e in rows or []:
        r = _restriction(e.get("initiative"), e.get("region"), e.get("order"))
        if r is not None:
            out[e["target"]] = r
    return out


def _rows(entries: Mapping[str, Restriction]) -> list[dict[str, str]]:
    return [{"target": t, "initiative": r.initiative, "region": r.region, "order": r.order_reference}
            for t, r in sorted(entries.items())]


def _store(p: RegistryPerson, state: AccessState) -> None:
    p.sealed_by_initiative = state.seal.initiative if state.seal else None
    p.sealed_by_region = state.seal.region if state.seal else None
    p.sealed_by_order = state.seal.order_reference if state.seal else None
    p.locked_by_initiative = state.lock.initiative if state.lock else None
    p.locked_by_region = state.lock.region if state.lock else None
    p.locked_by_order = state.lock.order_reference if state.lock else None
    p.blocked_guardians = _rows(state.guardian_blocks)
    p.minor_access = _rows(state.minor_grants)


def order_effects(order: Order) -> list[Effect]:
    return effects_for(order.order_type, list(order.actions or []), order.guardian_pnr,
                       order.minor_grant, order.minor_recipient)


def record_effects(s: Session, order: Order, system_reference: str, at: datetime, *, strict: bool = True) -> None:
    """Put the order's effects into our record of what is in force: one `AppliedEffect` row per effect, each
    applied once however often this is called. All or nothing: a refused effect raises `ExecutionRefused`
    before anything is written. `strict=False` records a change a person confirms having made in the 1177
    tool (see models.access.apply)."""
    done = {(a.effect, a.target) for a in s.scalars(
        select(AppliedEffect).where(AppliedEffect.order_reference == order.reference))}
    state = access_state(s, order.patient_pnr)
    restriction = Restriction(order.initiative, order.region, order.reference)  # type: ignore[arg-type]
    new: list[AppliedEffect] = []
    for effect in order_effects(order):
        key = (effect.kind.value, effect.target or "")
        if key in done:
            continue
        try:
            state = apply(state, effect, restriction, strict=strict)
        except ImpossibleEffect as exc:
            raise ExecutionRefused(str(exc)) from exc
        new.append(AppliedEffect(order_reference=order.reference, effect=effect.kind.value,
                                 target=effect.target or "", system_reference=system_reference[:64], at=at))
    if not new:
        return
    person = s.get(RegistryPerson, order.patient_pnr)
    if person is None:
        person = RegistryPerson(pnr=order.patient_pnr, blocked_guardians=[], minor_access=[])
        s.add(person)
    _store(person, state)
    s.add_all(new)
    s.flush()


class SimulatedRegistry:
    manual = False

    def available(self) -> bool:
        return True  # it lives in the orders database

    def apply(self, s: Session, order: Order, at: datetime | None = None) -> str:
        system_ref = f"SIM-{order.reference}"
        record_effects(s, order, system_ref, at or datetime.now(UTC))
        return system_ref


class ManualGateway:
    manual = True

    def available(self) -> bool:
        return True  # an account administrator with the 1177 administration tool

    def apply(self, s: Session, order: Order, at: datetime | None = None) -> str:  # pragma: no cover - the flow waits for a person instead
        raise RuntimeError("manual execution is confirmed by an account administrator")


class UnavailableGateway:
    manual = False

    def available(self) -> bool:
        return False

    def apply(self, s: Session, order: Order, at: datetime | None = None) -> str:
        raise GatewayUnavailable("1177 administration system unreachable")


GATEWAYS: dict[str, type[SimulatedRegistry | ManualGateway | UnavailableGateway]] = {
    "simulated": SimulatedRegistry, "manual": ManualGateway, "down": UnavailableGateway}


class ConfiguredGateway:
    """The gateway the settings name (`RO_GATEWAY`), unavailable while the down-flag file exists: looked at
    on every call, so a drill takes the system down and up again without restarting anything."""

    def __init__(self, kind: str = "simulated", down_flag: Path | None = None) -> None:
        self.kind, self.down_flag = kind, down_flag

    def current(self) -> ExecutionGateway:
        if self.down_flag is not None and self.down_flag.exists():
            return UnavailableGateway()
        return GATEWAYS[self.kind]()

    @property
    def manual(self) -> bool:
        return self.current().manual

    def available(self) -> bool:
        return self.current().available()

    def apply(self, s: Session, order: Order, at: datetime | None = None) -> str:
        return self.current().apply(s, order, at)


__all__ = ["ConfiguredGateway", "EffectKind", "ExecutionGateway", "GatewayUnavailable", "SimulatedRegistry",
           "ManualGateway", "UnavailableGateway", "access_state", "known_access_state", "record_effects"]
