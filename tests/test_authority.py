"""Who may decide which stage (models.authority.refusal) and the status transitions (models.status)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from models.authority import STAGE_ROLES, Decider, OrderFacts, refusal
from models.status import (
    ALLOWED,
    CANCELLABLE,
    FINAL,
    LABELS_SV,
    IllegalTransition,
    OrderStatus,
    can_transition,
    check_transition,
)

S = OrderStatus


def person(hsa_id: str, *roles: str, unit: str | None = "DEMO-KALMAR-UNIT",
           region: str | None = "kalmar") -> Decider:
    return Decider(hsa_id, roles, unit, region)


CLINICIAN = person("DEMO-KALMAR-CLINICIAN", "clinician")
CLINICIAN2 = person("DEMO-KALMAR-CLINICIAN2", "clinician")
ASSESSOR = person("DEMO-KALMAR-ASSESSOR", "assessor")
HEAD = person("DEMO-KALMAR-HEAD", "head_of_department")
BAKJOUR = person("DEMO-KALMAR-BAKJOUR", "bakjour")
ONCALL = person("DEMO-KALMAR-ONCALL", "on_call")
SUPPORT = person("DEMO-KALMAR-SUPPORT", "support")
ACCOUNTADMIN = person("DEMO-KALMAR-ACCOUNTADMIN", "account_admin")
ADMIN = person("DEMO-ADMIN", "admin", unit=None, region=None)
STOCKHOLM_HEAD = person("DEMO-STOCKHOLM-HEAD", "head_of_department", unit="DEMO-STOCKHOLM-UNIT",
                        region="stockholm")
STOCKHOLM_BAKJOUR = person("DEMO-STOCKHOLM-BAKJOUR", "bakjour", unit="DEMO-STOCKHOLM-UNIT", region="stockholm")
STOCKHOLM_ONCALL = person("DEMO-STOCKHOLM-ONCALL", "on_call", unit="DEMO-STOCKHOLM-UNIT", region="stockholm")
STOCKHOLM_ASSESSOR = person("DEMO-STOCKHOLM-ASSESSOR", "assessor", unit="DEMO-STOCKHOLM-UNIT", region="stockholm")
STOCKHOLM_ACCOUNTADMIN = person("DEMO-STOCKHOLM-ACCOUNTADMIN", "account_admin", unit="DEMO-STOCKHOLM-UNIT",
                                region="stockholm")

CARE_ORDER = OrderFacts(submitted_by="DEMO-KALMAR-CLINICIAN", care_unit_hsa_id="DEMO-KALMAR-UNIT",
                        unit_head_hsa_id="DEMO-KALMAR-HEAD", region="kalmar", initiative="care",
                        approval_role="head_of_department", assessed_by="DEMO-KALMAR-ASSESSOR")
PATIENT_ORDER = replace(CARE_ORDER, initiative="patient", assessed_by=None)
URGENT_OUT_OF_HOURS = replace(CARE_ORDER, approval_role="bakjour")


def code(stage: str, decider: Decider | None, order: OrderFacts = CARE_ORDER) -> str | None:
    r = refusal(stage, decider, order)
    if r is not None:
        assert r.message.strip()
    return r.code if r else None


# --- happy paths ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("stage", "decider", "order"), [
    ("harm_assessment", ASSESSOR, CARE_ORDER),
    ("approval", HEAD, CARE_ORDER),
    ("approval", HEAD, PATIENT_ORDER),
    ("approval", BAKJOUR, URGENT_OUT_OF_HOURS),
    ("callback", ONCALL, CARE_ORDER),
    ("callback", SUPPORT, CARE_ORDER),
    ("execution", ACCOUNTADMIN, CARE_ORDER),
    ("callback", person("DEMO-X-ONCALL", "on_call", region=None), CARE_ORDER),  # no region: not refused
], ids=["assessor", "head", "head-patient-order", "bakjour", "oncall", "support", "accountadmin",
        "oncall-without-region"])
def test_allowed(stage: str, decider: Decider, order: OrderFacts) -> None:
    assert refusal(stage, decider, order) is None


def test_person_with_several_roles() -> None:
    both = person("DEMO-KALMAR-HEAD", "assessor", "head_of_department")
    assert code("harm_assessment", both, replace(CARE_ORDER, assessed_by=None)) is None
    assert code("approval", both, replace(CARE_ORDER, assessed_by="DEMO-KALMAR-ASSESSOR")) is None


# --- refusals ----------------------------------------------------------------------------------------------

def test_unknown_person() -> None:
    assert code("approval", None) == "not_found"


@pytest.mark.parametrize(("stage", "decider"), [
    ("harm_assessment", CLINICIAN2),
    ("harm_assessment", HEAD),
    ("harm_assessment", ADMIN),
    ("approval", ASSESSOR),
    ("approval", CLINICIAN2),
    ("approval", BAKJOUR),            # the plan says head_of_department
    ("approval", ADMIN),
    ("callback", CLINICIAN2),
    ("callback", ACCOUNTADMIN),
    ("execution", SUPPORT),
    ("execution", HEAD),
])
def test_wrong_role(stage: str, decider: Decider) -> None:
    assert code(stage, decider) == "wrong_role"


def test_head_cannot_approve_when_plan_says_bakjour() -> None:
    assert code("approval", HEAD, URGENT_OUT_OF_HOURS) == "wrong_role"


@pytest.mark.parametrize(("stage", "order", "roles"), [
    ("harm_assessment", CARE_ORDER, ("clinician", "assessor")),
    ("approval", CARE_ORDER, ("clinician", "head_of_department")),
    ("approval", URGENT_OUT_OF_HOURS, ("clinician", "bakjour")),
    ("execution", CARE_ORDER, ("clinician", "account_admin")),
])
def test_four_eyes_own_order(stage: str, order: OrderFacts, roles: tuple[str, ...]) -> None:
    submitter = person("DEMO-KALMAR-HEAD", *roles)
    own = replace(order, submitted_by="DEMO-KALMAR-HEAD", assessed_by=None)
    assert code(stage, submitter, own) == "own_order"


def test_submitter_may_record_the_callback() -> None:
    """A callback is not a decision on the order: four eyes does not apply to it."""
    oncall = person("DEMO-KALMAR-ONCALL", "on_call", "clinician")
    assert code("callback", oncall, replace(CARE_ORDER, submitted_by="DEMO-KALMAR-ONCALL")) is None


def test_approver_who_assessed_is_refused_for_care_orders() -> None:
    head_and_assessor = person("DEMO-KALMAR-HEAD", "head_of_department", "assessor")
    assert code("approval", head_and_assessor, replace(CARE_ORDER, assessed_by="DEMO-KALMAR-HEAD")) == \
        "same_as_assessor"
    bakjour_and_assessor = person("DEMO-KALMAR-BAKJOUR", "bakjour", "assessor")
    assert code("approval", bakjour_and_assessor,
                replace(URGENT_OUT_OF_HOURS, assessed_by="DEMO-KALMAR-BAKJOUR")) == "same_as_assessor"


def test_approver_who_assessed_is_allowed_for_patient_orders() -> None:
    # Patient orders need no harm assessment; if one was recorded the rule only binds care orders.
    head_and_assessor = person("DEMO-KALMAR-HEAD", "head_of_department", "assessor")
    assert code("approval", head_and_assessor, replace(PATIENT_ORDER, assessed_by="DEMO-KALMAR-HEAD")) is None


def test_head_of_another_unit_is_refused() -> None:
    assert code("approval", STOCKHOLM_HEAD) == "other_unit"
    other_head_same_region = person("DEMO-KALMAR-HEAD2", "head_of_department", unit="DEMO-KALMAR-UNIT2")
    assert code("approval", other_head_same_region) == "other_unit"


def test_head_refused_when_unit_has_no_head() -> None:
    assert code("approval", HEAD, replace(CARE_ORDER, unit_head_hsa_id=None)) == "other_unit"


def test_bakjour_of_another_region_is_refused() -> None:
    assert code("approval", STOCKHOLM_BAKJOUR, URGENT_OUT_OF_HOURS) == "other_region"
    no_region = person("DEMO-X-BAKJOUR", "bakjour", unit=None, region=None)
    assert code("approval", no_region, URGENT_OUT_OF_HOURS) == "other_region"


def test_bakjour_of_own_region_from_another_unit_is_allowed() -> None:
    bakjour = person("DEMO-KALMAR-BAKJOUR2", "bakjour", unit="DEMO-KALMAR-OTHER-UNIT")
    assert code("approval", bakjour, URGENT_OUT_OF_HOURS) is None


@pytest.mark.parametrize(("stage", "decider"), [
    ("callback", STOCKHOLM_ONCALL),
    ("harm_assessment", STOCKHOLM_ASSESSOR),
    ("execution", STOCKHOLM_ACCOUNTADMIN),
])
def test_every_stage_by_another_region_is_refused(stage: str, decider: Decider) -> None:
    assert code(stage, decider) == "other_region"


def test_assessor_of_another_region_is_refused_even_for_a_patient_order() -> None:
    assert code("harm_assessment", STOCKHOLM_ASSESSOR, PATIENT_ORDER) == "other_region"


def test_assessor_without_a_region_may_assess_any_region() -> None:
    # As for reading (forms.auth.may_read): a person without a region works for all of them.
    anywhere = person("DEMO-X-ASSESSOR", "assessor", unit=None, region=None)
    assert code("harm_assessment", anywhere) is None


def test_head_of_the_unit_from_another_region_is_still_the_unit_head() -> None:
    # The rule for heads is the unit's head, not the region: a head listed as the unit's head approves.
    head_elsewhere = person("DEMO-KALMAR-HEAD", "head_of_department", unit="DEMO-STOCKHOLM-UNIT", region="stockholm")
    assert code("approval", head_elsewhere) is None
    assert code("approval", replace(HEAD, hsa_id="DEMO-KALMAR-HEAD2")) == "other_unit"


def test_the_order_region_s_bakjour_may_not_approve_when_the_plan_says_head() -> None:
    assert code("approval", BAKJOUR, CARE_ORDER) == "wrong_role"
    assert code("approval", STOCKHOLM_HEAD, URGENT_OUT_OF_HOURS) == "wrong_role"


def test_stage_roles_match_the_contract() -> None:
    assert STAGE_ROLES == {
        "callback": ("on_call", "support"),
        "harm_assessment": ("assessor",),
        "approval": ("head_of_department", "bakjour"),
        "execution": ("account_admin",),
    }


# --- status transitions -----------------------------------------------------------------------------------

CONTRACT_STATUSES = ["submitted", "awaiting_callback", "awaiting_assessment", "awaiting_approval", "executing",
                     "completed", "rejected", "cancelled", "paper_fallback", "failed"]


def test_statuses_are_the_contract_names() -> None:
    assert [s.value for s in OrderStatus] == CONTRACT_STATUSES
    assert set(ALLOWED) == set(OrderStatus)
    assert set(LABELS_SV) == set(OrderStatus)


@pytest.mark.parametrize(("current", "target"), [
    (S.SUBMITTED, S.AWAITING_CALLBACK),
    (S.SUBMITTED, S.AWAITING_ASSESSMENT),
    (S.SUBMITTED, S.AWAITING_APPROVAL),       # harm assessment not required
    (S.SUBMITTED, S.CANCELLED),
    (S.SUBMITTED, S.PAPER_FALLBACK),
    (S.AWAITING_CALLBACK, S.AWAITING_ASSESSMENT),
    (S.AWAITING_CALLBACK, S.AWAITING_APPROVAL),
    (S.AWAITING_ASSESSMENT, S.AWAITING_APPROVAL),
    (S.AWAITING_ASSESSMENT, S.REJECTED),      # do_not_restrict
    (S.AWAITING_APPROVAL, S.EXECUTING),
    (S.AWAITING_APPROVAL, S.REJECTED),
    (S.AWAITING_APPROVAL, S.CANCELLED),
    (S.EXECUTING, S.COMPLETED),
    (S.EXECUTING, S.FAILED),
    (S.AWAITING_CALLBACK, S.FAILED),          # its runs kept failing (models/runs.py)
    (S.AWAITING_ASSESSMENT, S.FAILED),
    (S.AWAITING_APPROVAL, S.FAILED),
    (S.EXECUTING, S.PAPER_FALLBACK),
    (S.PAPER_FALLBACK, S.AWAITING_APPROVAL),
    (S.PAPER_FALLBACK, S.EXECUTING),
])
def test_allowed_transition(current: OrderStatus, target: OrderStatus) -> None:
    assert can_transition(current, target)
    check_transition(current, target)


@pytest.mark.parametrize(("current", "target"), [
    (S.SUBMITTED, S.EXECUTING),               # never past approval
    (S.SUBMITTED, S.COMPLETED),
    (S.AWAITING_CALLBACK, S.EXECUTING),
    (S.AWAITING_ASSESSMENT, S.EXECUTING),
    (S.AWAITING_ASSESSMENT, S.AWAITING_CALLBACK),
    (S.AWAITING_APPROVAL, S.AWAITING_ASSESSMENT),
    (S.AWAITING_APPROVAL, S.COMPLETED),
    (S.EXECUTING, S.CANCELLED),               # cancelling only before execution
    (S.EXECUTING, S.REJECTED),
    (S.EXECUTING, S.AWAITING_APPROVAL),
    (S.COMPLETED, S.EXECUTING),
    (S.COMPLETED, S.CANCELLED),
    (S.REJECTED, S.AWAITING_APPROVAL),
    (S.CANCELLED, S.SUBMITTED),
    (S.FAILED, S.EXECUTING),
    (S.PAPER_FALLBACK, S.COMPLETED),
    (S.SUBMITTED, S.SUBMITTED),
])
def test_illegal_transition(current: OrderStatus, target: OrderStatus) -> None:
    assert not can_transition(current, target)
    with pytest.raises(IllegalTransition):
        check_transition(current, target)


def test_final_statuses_go_nowhere() -> None:
    assert {S.COMPLETED, S.REJECTED, S.CANCELLED, S.FAILED} == FINAL
    for status in FINAL:
        assert ALLOWED[status] == frozenset()
        for target in OrderStatus:
            assert not can_transition(status, target)


def test_nothing_goes_back_to_submitted() -> None:
    for status in OrderStatus:
        assert not can_transition(status, S.SUBMITTED)


def test_cancellable_set() -> None:
    assert {S.SUBMITTED, S.AWAITING_CALLBACK, S.AWAITING_ASSESSMENT, S.AWAITING_APPROVAL,
            S.PAPER_FALLBACK} == CANCELLABLE
    # Cancellable exactly where the transition table allows cancelling.
    assert {s for s in OrderStatus if can_transition(s, S.CANCELLED)} == CANCELLABLE
    assert S.EXECUTING not in CANCELLABLE
    assert not CANCELLABLE & FINAL


def test_every_non_final_status_can_reach_an_end() -> None:
    for start in set(OrderStatus) - FINAL:
        seen, todo = {start}, [start]
        while todo:
            for nxt in ALLOWED[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & FINAL, start


def test_statuses_accept_strings() -> None:
    assert can_transition(OrderStatus("submitted"), OrderStatus("awaiting_assessment"))
    with pytest.raises(ValueError):
        OrderStatus("approved")
