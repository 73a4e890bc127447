"""The simulated registry's rules (models/access.py): pure, no database."""

from __future__ import annotations

import pytest

from models.access import (
    MINOR,
    AccessState,
    Effect,
    EffectKind,
    ImpossibleEffect,
    Restriction,
    apply,
    effects_for,
)

GUARDIAN = "guardian-a"  # the model never parses targets: no numbers needed here
OTHER_GUARDIAN = "guardian-b"
BY_CARE = Restriction("care", "kalmar", "RO-2026-000001")
BY_PATIENT = Restriction("patient", "kalmar", "RO-2026-000002")
LATER_CARE = Restriction("care", "stockholm", "RO-2026-000003")
LATER_PATIENT = Restriction("patient", "jonkoping", "RO-2026-000004")

SEAL, LOCK = Effect(EffectKind.SEAL_JOURNAL), Effect(EffectKind.LOCK_LOGIN)
LIFT, UNLOCK = Effect(EffectKind.LIFT_SEAL), Effect(EffectKind.UNLOCK_LOGIN)


@pytest.mark.parametrize("effect", [LIFT, UNLOCK], ids=["lift_seal", "unlock_login"])
def test_lifting_what_is_not_in_force_is_refused(effect: Effect) -> None:
    for by in (LATER_CARE, LATER_PATIENT):
        with pytest.raises(ImpossibleEffect, match="in force"):
            apply(AccessState(), effect, by)
    # The other restriction being in force does not count.
    other = AccessState(lock=BY_PATIENT) if effect is LIFT else AccessState(seal=BY_PATIENT)
    with pytest.raises(ImpossibleEffect):
        apply(other, effect, LATER_CARE)


@pytest.mark.parametrize(("effect", "state"), [(LIFT, AccessState(seal=BY_CARE)), (UNLOCK, AccessState(lock=BY_CARE))],
                         ids=["lift_seal", "unlock_login"])
def test_a_patient_cannot_lift_what_care_set(effect: Effect, state: AccessState) -> None:
    with pytest.raises(ImpossibleEffect, match="care's initiative"):
        apply(state, effect, LATER_PATIENT)
    # Not even when an account administrator confirms it (strict=False only forgives a missing record).
    with pytest.raises(ImpossibleEffect, match="care's initiative"):
        apply(state, effect, LATER_PATIENT, strict=False)
    assert apply(state, effect, LATER_CARE) == AccessState()


@pytest.mark.parametrize("by", [LATER_CARE, LATER_PATIENT])
def test_a_restriction_the_patient_set_is_lifted_on_either_initiative(by: Restriction) -> None:
    both = AccessState(seal=BY_PATIENT, lock=BY_PATIENT)
    assert apply(both, LIFT, by) == AccessState(lock=BY_PATIENT)
    assert apply(apply(both, LIFT, by), UNLOCK, by) == AccessState()


def test_a_confirmed_manual_lift_of_something_we_never_recorded_is_a_no_op() -> None:
    assert apply(AccessState(), LIFT, LATER_PATIENT, strict=False) == AccessState()
    assert apply(AccessState(lock=BY_PATIENT), UNLOCK, LATER_CARE, strict=False) == AccessState()


def test_restricting_twice_keeps_who_restricted_first() -> None:
    sealed = apply(AccessState(), SEAL, BY_PATIENT)
    assert sealed.seal == BY_PATIENT
    assert apply(sealed, SEAL, LATER_CARE) == sealed
    locked = apply(sealed, LOCK, BY_CARE)
    assert (locked.seal, locked.lock) == (BY_PATIENT, BY_CARE)
    assert locked.restriction_for("lock_login") == BY_CARE and locked.restriction_for("seal_journal") == BY_PATIENT


def test_guardian_blocks_and_minor_grants_remember_who_set_them() -> None:
    granted = apply(AccessState(), Effect(EffectKind.GRANT_MINOR_ACCESS, GUARDIAN), BY_CARE)
    granted = apply(granted, Effect(EffectKind.GRANT_MINOR_ACCESS, MINOR), LATER_CARE)
    assert granted.minor_grants == {GUARDIAN: BY_CARE, MINOR: LATER_CARE}
    assert granted.minor_access == frozenset({GUARDIAN, MINOR})
    # Granting again keeps the first grant's origin.
    assert apply(granted, Effect(EffectKind.GRANT_MINOR_ACCESS, GUARDIAN), LATER_CARE).minor_grants[GUARDIAN] == BY_CARE

    # A block overrides that guardian's extended access; the child's own access stays.
    blocked = apply(granted, Effect(EffectKind.BLOCK_GUARDIAN, GUARDIAN), LATER_CARE)
    assert blocked.guardian_blocks == {GUARDIAN: LATER_CARE}
    assert blocked.blocked_guardians == frozenset({GUARDIAN})
    assert blocked.minor_grants == {MINOR: LATER_CARE}
    assert apply(blocked, Effect(EffectKind.BLOCK_GUARDIAN, GUARDIAN), BY_CARE).guardian_blocks == {GUARDIAN: LATER_CARE}
    with pytest.raises(ImpossibleEffect, match="blocked"):
        apply(blocked, Effect(EffectKind.GRANT_MINOR_ACCESS, GUARDIAN), BY_CARE)
    other = apply(blocked, Effect(EffectKind.GRANT_MINOR_ACCESS, OTHER_GUARDIAN), BY_CARE)
    assert other.minor_grants == {MINOR: LATER_CARE, OTHER_GUARDIAN: BY_CARE}

    revoked = apply(other, Effect(EffectKind.REVOKE_MINOR_ACCESS, MINOR), BY_CARE)
    assert revoked.minor_access == frozenset({OTHER_GUARDIAN}) and revoked.blocked_guardians == frozenset({GUARDIAN})


def test_guardian_effects_need_a_target() -> None:
    for kind in (EffectKind.BLOCK_GUARDIAN, EffectKind.GRANT_MINOR_ACCESS, EffectKind.REVOKE_MINOR_ACCESS):
        with pytest.raises(ImpossibleEffect):
            apply(AccessState(), Effect(kind), BY_CARE)


def test_the_effects_of_each_order_type() -> None:
    assert effects_for("seal_or_lock", ["seal_journal", "lock_login"], None, None, None) == [SEAL, LOCK]
    assert effects_for("restore_access", ["lock_login"], None, None, None) == [UNLOCK]
    assert effects_for("block_guardian", [], GUARDIAN, None, None) == [Effect(EffectKind.BLOCK_GUARDIAN, GUARDIAN)]
    assert effects_for("minor_access", [], GUARDIAN, True, "guardian") == [Effect(EffectKind.GRANT_MINOR_ACCESS, GUARDIAN)]
    assert effects_for("minor_access", [], None, False, "minor") == [Effect(EffectKind.REVOKE_MINOR_ACCESS, MINOR)]
