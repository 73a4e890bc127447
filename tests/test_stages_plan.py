"""The plan (models/routine.py): which human stages an order needs, who decides them, and the rule that said so."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from models.calendar import WorkingHours
from models.clock import STOCKHOLM
from models.regions import load_regions
from models.routine import (
    HUMAN_STAGES,
    PlanFacts,
    Planned,
    Stage,
    StagePlan,
    first_status,
    plan,
    replan_urgent,
)
from models.schemas import MinorAccess, OrderRequest
from models.status import OrderStatus

REGIONS = load_regions()
KALMAR = REGIONS["kalmar"].hours
OSTERGOTLAND = REGIONS["ostergotland"].hours
CALLBACK_MINUTES = REGIONS["kalmar"].callback_minutes

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


class Plan:
    """The plan of one order, by stage (the stage is the plan's key: a planned stage does not repeat it)."""

    def __init__(self, p: StagePlan) -> None:
        self.plan = p
        self.callback = p.stages[Stage.CALLBACK]
        self.harm_assessment = p.stages[Stage.HARM_ASSESSMENT]
        self.approval = p.stages[Stage.APPROVAL]


def plan_of(o: OrderRequest, at: datetime = TUESDAY_10, hours: WorkingHours = KALMAR,
            callback_minutes: int | None = CALLBACK_MINUTES) -> Plan:
    facts = PlanFacts(order_type=o.order_type, initiative=o.initiative, urgent=o.urgent)
    return Plan(plan(facts, at=at, hours=hours, callback_minutes=callback_minutes))


# --- harm assessment ------------------------------------------------------------------------------------

@pytest.mark.parametrize("order_type", ["seal_or_lock", "restore_access"])
def test_patient_initiative_needs_no_harm_assessment_and_says_why(order_type: str) -> None:
    p = plan_of(order(order_type, initiative="patient"))
    harm = p.harm_assessment
    assert p.plan.stages[Stage.HARM_ASSESSMENT] is harm and not p.plan.required("harm_assessment")
    assert harm.required is False
    assert harm.role is None
    assert harm.rule == "patient_own_request"
    assert harm.reason.strip()           # recorded as "not required" with a reason, never silently skipped


@pytest.mark.parametrize("order_type", ["seal_or_lock", "restore_access", "minor_access"])
def test_care_initiative_needs_harm_assessment_by_assessor(order_type: str) -> None:
    harm = plan_of(order(order_type)).harm_assessment
    assert harm.required is True
    assert harm.role == "assessor"
    assert harm.rule == "care_initiative_harm_test"
    assert harm.reason.strip()


def test_block_guardian_has_its_own_harm_rule() -> None:
    harm = plan_of(order("block_guardian")).harm_assessment
    assert harm.required is True
    assert harm.role == "assessor"
    assert harm.rule == "guardian_block_harm_test"
    assert harm.rule != plan_of(order("seal_or_lock")).harm_assessment.rule
    assert "12 kap. 3 §" in harm.reason


def test_urgency_and_time_do_not_change_the_harm_assessment() -> None:
    for at in (TUESDAY_10, sthlm("2026-11-28 03:00")):
        for urgent in (False, True):
            assert plan_of(order(urgent=urgent), at).harm_assessment.rule == "care_initiative_harm_test"
            assert plan_of(order(initiative="patient", urgent=urgent), at).harm_assessment.required is False


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
    p = plan_of(order(order_type, urgent=urgent), at)
    approval = p.approval
    assert p.plan.required("approval") and p.plan.role("approval") == approval.role
    assert approval.required is True
    assert (approval.role, approval.rule) == who
    assert approval.reason.strip()


def test_approval_is_required_for_patient_initiative_too() -> None:
    approval = plan_of(order(initiative="patient")).approval
    assert approval.required is True
    assert approval.role == "head_of_department"


def test_region_hours_decide_office_hours() -> None:
    late = WorkingHours(office_start=datetime(2000, 1, 1, 9).time(), office_end=datetime(2000, 1, 1, 18).time())
    at = sthlm("2026-11-24 17:30")
    assert plan_of(order(urgent=True), at, KALMAR).approval.role == "bakjour"
    assert plan_of(order(urgent=True), at, late).approval.role == "head_of_department"


def test_always_open_urgent_line_still_has_office_hours() -> None:
    """Östergötland's urgent line is open around the clock; approval still follows office hours."""
    assert plan_of(order(urgent=True, region="ostergotland"), TUESDAY_10, OSTERGOTLAND).approval.role == \
        "head_of_department"
    assert plan_of(order(urgent=True, region="ostergotland"), sthlm("2026-11-28 10:00"), OSTERGOTLAND) \
        .approval.role == "bakjour"


def test_plan_lists_stages_in_order() -> None:
    p = plan_of(order()).plan
    assert list(p.stages) == list(HUMAN_STAGES) == [Stage.CALLBACK, Stage.HARM_ASSESSMENT, Stage.APPROVAL]
    assert all(isinstance(r, Planned) for r in p.stages.values())
    assert list(p.as_json()) == ["callback", "harm_assessment", "approval"]
    assert StagePlan.from_json(p.as_json()) == p


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_of(order(urgent=True), datetime(2026, 11, 24, 10, 0))


# --- callback -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("at", [TUESDAY_10, sthlm("2026-11-28 03:00")])
def test_urgent_orders_plan_a_callback_by_on_call_with_the_regions_promise(at: datetime) -> None:
    cb = plan_of(order(urgent=True), at).callback
    assert (cb.required, cb.role, cb.rule) == (True, "on_call", "urgent_callback")
    assert f"inom {CALLBACK_MINUTES} minuter" in cb.reason
    assert "snarast" in plan_of(order(urgent=True), at, callback_minutes=None).callback.reason


def test_a_non_urgent_order_records_its_callback_as_not_required() -> None:
    cb = plan_of(order()).callback
    assert (cb.required, cb.role, cb.rule) == (False, None, "not_urgent")
    assert cb.reason.strip()


def test_the_first_status_is_the_first_required_stage() -> None:
    assert first_status(plan_of(order(urgent=True)).plan) == OrderStatus.AWAITING_CALLBACK
    assert first_status(plan_of(order()).plan) == OrderStatus.AWAITING_ASSESSMENT
    assert first_status(plan_of(order(initiative="patient")).plan) == OrderStatus.AWAITING_APPROVAL


# --- made urgent after it was planned -------------------------------------------------------------------

SATURDAY_10 = sthlm("2026-11-28 10:00")


def replanned(status: OrderStatus, at: datetime, *, pending: bool = False, submitted: datetime = TUESDAY_10,
              **extra: Any) -> tuple[Plan, tuple[Stage, ...]]:
    before = plan_of(order(**extra), submitted).plan
    r = replan_urgent(before, status, at=at, hours=KALMAR, callback_minutes=CALLBACK_MINUTES,
                      approval_pending=pending)
    return Plan(r.plan), r.changed


def test_made_urgent_in_office_hours_plans_the_callback_and_keeps_the_head() -> None:
    p, changed = replanned(OrderStatus.AWAITING_ASSESSMENT, TUESDAY_10)
    assert changed == (Stage.CALLBACK,)
    assert (p.callback.required, p.callback.role, p.callback.rule) == (True, "on_call", "made_urgent")
    assert f"inom {CALLBACK_MINUTES} minuter" in p.callback.reason
    assert p.approval.role == "head_of_department"
    assert p.harm_assessment.rule == "care_initiative_harm_test"   # untouched


@pytest.mark.parametrize("status", [OrderStatus.AWAITING_ASSESSMENT, OrderStatus.AWAITING_APPROVAL])
def test_made_urgent_out_of_hours_before_approval_goes_to_the_bakjour(status: OrderStatus) -> None:
    p, changed = replanned(status, SATURDAY_10)
    assert changed == (Stage.CALLBACK, Stage.APPROVAL)
    assert (p.approval.role, p.approval.rule) == ("bakjour", "urgent_out_of_hours_bakjour")


def test_made_urgent_out_of_hours_keeps_an_approval_being_decided_or_past() -> None:
    p, changed = replanned(OrderStatus.AWAITING_APPROVAL, SATURDAY_10, pending=True)
    assert changed == (Stage.CALLBACK,) and p.approval.role == "head_of_department"
    p, changed = replanned(OrderStatus.EXECUTING, SATURDAY_10)
    assert changed == (Stage.CALLBACK,) and p.approval.role == "head_of_department"


def test_an_urgent_order_made_urgent_again_changes_nothing() -> None:
    p, changed = replanned(OrderStatus.AWAITING_APPROVAL, SATURDAY_10, submitted=SATURDAY_10, urgent=True)
    assert changed == ()
    assert p.callback.rule == "urgent_callback" and p.approval.role == "bakjour"


def test_an_order_not_yet_planned_is_not_replanned() -> None:
    r = replan_urgent(StagePlan(), OrderStatus.SUBMITTED, at=SATURDAY_10, hours=KALMAR,
                      callback_minutes=CALLBACK_MINUTES, approval_pending=False)
    assert r.changed == () and r.plan == StagePlan()
