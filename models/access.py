"""A person's access state in the 1177 services and the effects orders have on it.

The simulated 1177 registry and the rule engine share this model, so "what is in force"
means the same thing when an order is validated and when it is executed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

Initiative = Literal["patient", "care"]
MINOR = "minor"  # the target of the child's own 13-15 access; any other target is a guardian's number


class EffectKind(StrEnum):
    SEAL_JOURNAL = "seal_journal"
    LIFT_SEAL = "lift_seal"
    LOCK_LOGIN = "lock_login"
    UNLOCK_LOGIN = "unlock_login"
    BLOCK_GUARDIAN = "block_guardian"
    GRANT_MINOR_ACCESS = "grant_minor_access"
    REVOKE_MINOR_ACCESS = "revoke_minor_access"


@dataclass(frozen=True)
class Restriction:
    """Who set something that is in force: the order's initiative, region and reference (DOMAIN §1.3, R-4).
    A patient may lift only what was set on the patient's own initiative (R-3)."""
    initiative: Initiative
    region: str
    order_reference: str


@dataclass(frozen=True)
class Effect:
    kind: EffectKind
    # Guardian number (12 digits) for guardian effects, "minor" or a guardian number for minor access.
    target: str | None = None


@dataclass(frozen=True)
class AccessState:
    seal: Restriction | None = None
    lock: Restriction | None = None
    # Blocked guardian's 12-digit number -> the order that blocked them.
    guardian_blocks: Mapping[str, Restriction] = field(default_factory=dict)
    # "minor" (the child's own access) or a guardian's number -> the order that granted the access.
    minor_grants: Mapping[str, Restriction] = field(default_factory=dict)

    @property
    def blocked_guardians(self) -> frozenset[str]:
        return frozenset(self.guardian_blocks)

    @property
    def minor_access(self) -> frozenset[str]:
        return frozenset(self.minor_grants)

    def restriction_for(self, action: str) -> Restriction | None:
        return {"seal_journal": self.seal, "lock_login": self.lock}.get(action)


class ImpossibleEffect(ValueError):
    """The registry refuses an effect that makes no sense in the current state."""


def _lift(in_force: Restriction | None, by: Restriction, what: str, strict: bool) -> None:
    if in_force is None:
        if strict:
            raise ImpossibleEffect(f"no {what} in force")
        return
    if by.initiative == "patient" and in_force.initiative == "care":
        # a patient can never lift a restriction made on care's initiative.
        raise ImpossibleEffect(f"{what} was made on care's initiative")


def apply(state: AccessState, effect: Effect, restriction: Restriction, *, strict: bool = True) -> AccessState:
    """The state after an effect made by the order `restriction` describes.

    Re-applying a restriction already in force is a no-op, never an error. Lifting what is not in force is
    refused (the gateway skips effects the same order applied before, so a retry never gets here twice);
    `strict=False` makes it a no-op instead, for recording a change an account administrator confirms having
    made in the 1177 tool, where our record of the person may be incomplete."""
    k = effect.kind
    if k is EffectKind.SEAL_JOURNAL:
        return state if state.seal else replace(state, seal=restriction)
    if k is EffectKind.LOCK_LOGIN:
        return state if state.lock else replace(state, lock=restriction)
    if k is EffectKind.LIFT_SEAL:
        _lift(state.seal, restriction, "seal", strict)
        return replace(state, seal=None)
    if k is EffectKind.UNLOCK_LOGIN:
        _lift(state.lock, restriction, "login lock", strict)
        return replace(state, lock=None)
    target = effect.target
    if target is None:
        raise ImpossibleEffect(f"{k} needs a target")
    if k is EffectKind.BLOCK_GUARDIAN:
        # A block overrides extended 13-15 access for that guardian.
        blocks = dict(state.guardian_blocks)
        blocks.setdefault(target, restriction)
        grants = {t: r for t, r in state.minor_grants.items() if t != target}
        return replace(state, guardian_blocks=blocks, minor_grants=grants)
    if k is EffectKind.GRANT_MINOR_ACCESS:
        if target in state.guardian_blocks:
            raise ImpossibleEffect("guardian is blocked")
        grants = dict(state.minor_grants)
        grants.setdefault(target, restriction)
        return replace(state, minor_grants=grants)
    if k is EffectKind.REVOKE_MINOR_ACCESS:
        return replace(state, minor_grants={t: r for t, r in state.minor_grants.items() if t != target})
    raise ImpossibleEffect(str(k))  # pragma: no cover - exhaustive above


def effects_for(order_type: str, actions: list[str], guardian: str | None,
                minor_grant: bool | None, minor_recipient: str | None) -> list[Effect]:
    """The registry effects an order asks for, in the order they are applied."""
    if order_type == "seal_or_lock":
        return [Effect(EffectKind(a)) for a in actions]
    if order_type == "restore_access":
        lift = {"seal_journal": EffectKind.LIFT_SEAL, "lock_login": EffectKind.UNLOCK_LOGIN}
        return [Effect(lift[a]) for a in actions]
    if order_type == "block_guardian":
        return [Effect(EffectKind.BLOCK_GUARDIAN, guardian)]
    if order_type == "minor_access":
        target = guardian if minor_recipient == "guardian" else MINOR
        kind = EffectKind.GRANT_MINOR_ACCESS if minor_grant else EffectKind.REVOKE_MINOR_ACCESS
        return [Effect(kind, target)]
    raise ValueError(order_type)
