"""Who may decide which stage of an order: roles and four eyes, as a pure rule.

The app checks this before it resumes a flow; the flow checks it again on resume, because the
Prefect UI can resume a run too and what is typed there is only self-declared.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGE_ROLES: dict[str, tuple[str, ...]] = {
    "callback": ("on_call", "support"),
    "harm_assessment": ("assessor",),
    "approval": ("head_of_department", "bakjour"),
    "execution": ("account_admin",),
}


@dataclass(frozen=True)
class Decider:
    hsa_id: str
    roles: tuple[str, ...]
    unit_hsa_id: str | None
    region: str | None


@dataclass(frozen=True)
class OrderFacts:
    submitted_by: str
    care_unit_hsa_id: str
    unit_head_hsa_id: str | None
    region: str
    initiative: str
    approval_role: str            # from the stage plan: head_of_department or bakjour
    assessed_by: str | None = None


@dataclass(frozen=True)
class Refusal:
    code: str      # not_found | wrong_role | own_order | same_as_assessor | other_unit | other_region
    message: str   # Swedish


def refusal(stage: str, decider: Decider | None, order: OrderFacts) -> Refusal | None:
    """None when `decider` may decide `stage` of `order`, otherwise why not."""
    if decider is None:
        return Refusal("not_found", "Personen finns inte i personalkatalogen.")
    roles = STAGE_ROLES[stage] if stage != "approval" else (order.approval_role,)
    if not any(r in decider.roles for r in roles):
        return Refusal("wrong_role", "Du har inte behörighet att fatta detta beslut.")
    if decider.hsa_id == order.submitted_by and stage != "callback":
        return Refusal("own_order", "Du kan inte besluta om en beställning som du själv har gjort (fyra ögon).")
    if stage == "approval":
        if order.approval_role == "head_of_department" and decider.hsa_id != order.unit_head_hsa_id:
            return Refusal("other_unit", "Endast verksamhetschefen för den beställande vårdenheten kan godkänna.")
        if order.approval_role == "bakjour" and decider.region != order.region:
            return Refusal("other_region", "Bakjouren måste tillhöra beställningens region.")
        if order.initiative == "care" and order.assessed_by == decider.hsa_id:
            return Refusal("same_as_assessor", "Den som menprövat kan inte också godkänna (fyra ögon).")
    # A person without a region works for every region (as reading does: forms.auth.may_read); approval
    # checked its own, stricter rule above (the unit's head, or the order region's bakjour).
    if stage in ("callback", "harm_assessment", "execution") and decider.region not in (None, order.region):
        return Refusal("other_region", "Ärendet tillhör en annan region.")
    return None
