"""Who may decide which stage of an order: the deciders of `models.routine`, checked for one person.

The app checks this before it stores a decision; the flow checks it again when it accepts one. The queues
select their orders with the same deciders, in SQL (`tasks/steps/queues.py`), and still ask this rule for
every row.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.routine import STAGES, Stage, StageDef, stage_def
from models.routine import Decider as Rule

STAGE_ROLES: dict[str, tuple[str, ...]] = {s.value: d.roles for s, d in STAGES.items()}


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


NOT_FOUND = Refusal("not_found", "Personen finns inte i personalkatalogen.")
WRONG_ROLE = Refusal("wrong_role", "Du har inte behörighet att fatta detta beslut.")
OWN_ORDER = Refusal("own_order", "Du kan inte besluta om en beställning som du själv har gjort (fyra ögon).")
SAME_AS_ASSESSOR = Refusal("same_as_assessor", "Den som menprövat kan inte också godkänna (fyra ögon).")
OUT_OF_SCOPE = {
    "unit_head": Refusal("other_unit", "Endast verksamhetschefen för den beställande vårdenheten kan godkänna."),
    "own_region": Refusal("other_region", "Bakjouren måste tillhöra beställningens region."),
    "region": Refusal("other_region", "Ärendet tillhör en annan region."),
}


def applicable_rules(sd: StageDef, roles: tuple[str, ...], approval_role: str) -> list[Rule]:
    """The stage's deciders this person qualifies as by role (and, where the plan names the role, by plan)."""
    return [r for r in sd.deciders if r.role in roles
            and (not sd.role_from_plan or r.role == approval_role)]


def _in_scope(rule: Rule, decider: Decider, order: OrderFacts) -> bool:
    if rule.scope == "unit_head":
        return decider.hsa_id == order.unit_head_hsa_id
    if rule.scope == "own_region":
        return decider.region == order.region
    # A person without a region works for every region (as reading does: forms.auth.may_read).
    return decider.region in (None, order.region)


def refusal(stage: str, decider: Decider | None, order: OrderFacts) -> Refusal | None:
    """None when `decider` may decide `stage` of `order`, otherwise why not."""
    if decider is None:
        return NOT_FOUND
    sd = stage_def(stage)
    rules = applicable_rules(sd, decider.roles, order.approval_role)
    if not rules:
        return WRONG_ROLE
    if sd.four_eyes and decider.hsa_id == order.submitted_by:
        return OWN_ORDER
    if not any(_in_scope(r, decider, order) for r in rules):
        return OUT_OF_SCOPE[rules[0].scope]
    if sd.not_assessor_on_care and order.initiative == "care" and order.assessed_by == decider.hsa_id:
        return SAME_AS_ASSESSOR
    return None


__all__ = ["STAGE_ROLES", "Decider", "OrderFacts", "Refusal", "Stage", "applicable_rules", "refusal"]
