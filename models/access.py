"""A person's access state in the 1177 services and the effects orders have on it.

The simulated 1177 registry and the rule engine share this model, so "what is in force"
means the same thing when an order is validated and when it is executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

Initiative = Literal["patient", "care"]


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
    blocked_guardians: frozenset[str] = field(default_factory=frozenset)
    # "minor" for the child's own access, otherwise the guardian's 12-digit number.
    minor_access: frozenset[str] = field(default_factory=frozenset)

    def restriction_for(self, action: str) -> Restriction | None:
        return {"seal_journal": self.seal, "lock_login": self.lock}.get(action)


class ImpossibleEffect(ValueError):
    """The registry refuses an effect that makes no sense in the current state."""


def apply(state: AccessState, effect: Effect, restriction: Restriction) -> AccessState:
    """The state after an effect. Re-applying an effect already in force is a no-op, never an error,
    so a retried execution converges instead of failing."""
    k = effect.kind
    if k is EffectKind.SEAL_JOURNAL:
        return state if state.seal else replace(state, seal=restriction)
    if k is EffectKind.LOCK_LOGIN:
        return state if state.lock else replace(state, lock=restriction)
    if k is EffectKind.LIFT_SEAL:
        return replace(state, seal=None)
    if k is EffectKind.UNLOCK_LOGIN:
        return replace(state, lock=None)
    if effect.target is None:
        raise ImpossibleEffect(f"{k} needs a target")
    if k is EffectKind.BLOCK_GUARDIAN:
        # A block overrides extended 13-15 access for that guardian.
        return replace(state, blocked_guardians=state.blocked_guardians | {effect.target},
                       minor_access=state.minor_access - {effect.target})
    if k is EffectKind.GRANT_MINOR_ACCESS:
        if effect.target in state.blocked_guardians:
            raise ImpossibleEffect("guardian is blocked")
        return replace(state, minor_access=state.minor_access | {effect.target})
    if k is EffectKind.REVOKE_MINOR_ACCESS:
        return replace(state, minor_access=state.minor_access - {effect.target})
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
        target = guardian if minor_recipient == "guardian" else "minor"
        kind = EffectKind.GRANT_MINOR_ACCESS if minor_grant else EffectKind.REVOKE_MINOR_ACCESS
        return [Effect(kind, target)]
    raise ValueError(order_type)
