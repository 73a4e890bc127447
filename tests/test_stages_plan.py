"""plan_stages: which human stages an order needs, who decides them, and the rule that said so."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from models.calendar import WorkingHours
from models.clock import STOCKHOLM
from models.regions import load_regions
from models.rules import StagePlan, StageRequirement, plan_stages
from models.schemas import MinorAccess, OrderRequest

REGIONS = load_regions()
KALMAR = REGIONS["kalmar"].hours
OSTERGOTLAND = REGIONS["ostergotland"].hours

TUESDAY_10 = datetime(2026, 11, 24, 10, 0, tzinfo=STOCKHOLM)


def sthlm(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=STOCKHOLM)


def order(order_type: str = "seal_or_lock", **extra: Any) -> OrderRequest:
    fields: dict[str, Any] = {
        "order_type": order_type, "initiative": "care", "patient_personal_number": "191212121212",
        "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar", "urgent": False,
    }
    if order_type in ("seal_or_lock", "restore_access"):
        fields["actions"] = ["seal_journal"]
    if order_type == "block_guardian":
        fields["guardian_personal_number"] = "191212121212"
    if order_type == "minor_access":
        fields["minor_access"] = MinorAccess(grant=True, recipient="minor")
    fields.update(extra)
    return OrderRequest(**fields)


def plan(o: OrderRequest, at: datetime = TUESDAY_10, hours: WorkingHours = KALMAR) -> StagePlan:
    return plan_stages(o, at=at, hours=hours)


# --- harm assessment ------------------------------------------------------------------------------------

@pytest.mark.parametrize("order_type", ["seal_or_lock", "restore_access"])
def test_patient_initiative_needs_no_harm_assessment_and_says_why(order_type: str) -> None:
    harm = plan(order(order_type, initiative="patient")).harm_assessment
    assert harm.stage == "harm_assessment"
    assert harm.required is False
    assert harm.role is None
    assert harm.rule == "patient_own_request"
    assert harm.reason.strip()           # recorded as "not required" with a reason, never silently skipped


@pytest.mark.parametrize("order_type", ["seal_or_lock", "restore_access", "minor_access"])
def test_care_initiative_needs_harm_assessment_by_assessor(order_type: str) -> None:
    harm = plan(order(order_type)).harm_assessment
    assert harm.required is True
    assert harm.role == "assessor"
    assert harm.rule == "care_initiative_harm_test"
    assert harm.reason.strip()


def test_block_guardian_has_its_own_harm_rule() -> None:
    harm = plan(order("block_guardian")).harm_assessment
    assert harm.required is True
    assert harm.role == "assessor"
    assert harm.rule == "guardian_block_harm_test"
    assert harm.rule != plan(order("seal_or_lock")).harm_assessment.rule
    assert "12 kap. 3 §" in harm.reason


def test_urgency_and_time_do_not_change_the_harm_assessment() -> None:
    for at in (TUESDAY_10, sthlm("2026-11-28 03:00")):
        for urgent in (False, True):
            assert plan(order(urgent=urgent), at).harm_assessment.rule == "care_initiative_harm_test"
            assert plan(order(initiative="patient", urgent=urgent), at).harm_assessment.required is False


# --- approval ---------------------------------------------------------------------------------------------

HEAD = ("head_of_department", "head_of_department_approves")
BAKJOUR = ("bakjour", "urgent_out_of_hours_bakjour")


@pytest.mark.parametrize(("at", "urgent", "who"), [
    # office hours: always the head of department
    (sthlm("2026-11-24 10:00"), False, HEAD),
    (sthlm("2026-11-24 10:00"), True, HEAD),           # urgent during office hours: still the head
    (sthlm("2026-11-24 08:00"), True, HEAD),
    (sthlm("2026-11-24 16:29"), True, HEAD),
    # non-urgent: the head, whenever it comes in (handled next working day)
    (sthlm("2026-11-24 22:00"), False, HEAD),
    (sthlm("2026-11-28 10:00"), False, HEAD),
    (sthlm("2026-12-24 10:00"), False, HEAD),
    # urgent out of office hours: bakjour
    (sthlm("2026-11-24 18:00"), True, BAKJOUR),        # working-day evening, on call
    (sthlm("2026-11-24 06:30"), True, BAKJOUR),        # working-day early morning, on call
    (sthlm("2026-11-24 16:45"), True, BAKJOUR),        # after office hours, before on call starts
    (sthlm("2026-11-28 10:00"), True, BAKJOUR),        # Saturday
    (sthlm("2026-11-29 13:00"), True, BAKJOUR),        # Sunday
    (sthlm("2026-12-24 10:00"), True, BAKJOUR),        # julafton, a Thursday that is not a working day
    (sthlm("2026-12-25 10:00"), True, BAKJOUR),        # juldagen
    (sthlm("2027-01-01 11:00"), True, BAKJOUR),        # nyårsdagen
    (datetime(2026, 11, 24, 16, 0, tzinfo=UTC), True, BAKJOUR),   # 17:00 in Stockholm
    (datetime(2026, 11, 24, 9, 0, tzinfo=UTC), True, HEAD),       # 10:00 in Stockholm
])
@pytest.mark.parametrize("order_type", ["seal_or_lock", "block_guardian"])
def test_approver(order_type: str, at: datetime, urgent: bool, who: tuple[str, str]) -> None:
    approval = plan(order(order_type, urgent=urgent), at).approval
    assert approval.stage == "approval"
    assert approval.required is True
    assert (approval.role, approval.rule) == who
    assert approval.reason.strip()


def test_approval_is_required_for_patient_initiative_too() -> None:
    approval = plan(order(initiative="patient")).approval
    assert approval.required is True
    assert approval.role == "head_of_department"


def test_region_hours_decide_office_hours() -> None:
    late = WorkingHours(office_start=datetime(2000, 1, 1, 9).time(), office_end=datetime(2000, 1, 1, 18).time())
    at = sthlm("2026-11-24 17:30")
    assert plan(order(urgent=True), at, KALMAR).approval.role == "bakjour"
    assert plan(order(urgent=True), at, late).approval.role == "head_of_department"


def test_always_open_urgent_line_still_has_office_hours() -> None:
    """Östergötland's urgent line is open around the clock; approval still follows office hours."""
    assert plan(order(urgent=True, region="ostergotland"), TUESDAY_10, OSTERGOTLAND).approval.role == \
        "head_of_department"
    assert plan(order(urgent=True, region="ostergotland"), sthlm("2026-11-28 10:00"), OSTERGOTLAND) \
        .approval.role == "bakjour"


def test_plan_lists_stages_in_order() -> None:
    p = plan(order())
    assert [r.stage for r in p.as_list()] == ["harm_assessment", "approval"]
    assert all(isinstance(r, StageRequirement) for r in p.as_list())


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError):
        plan(order(urgent=True), datetime(2026, 11, 24, 10, 0))
