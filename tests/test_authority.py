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


@pytest.mark.parametrize(("stage", "decider", "refusal"), [
    ("harm_assessment", CLINICIAN2, "wrong_role"),
    ("harm_assessment", HEAD, "wrong_role"),
    ("harm_assessment", ADMIN, "wrong_role"),
    ("approval", ASSESSOR, "wrong_role"),
    ("approval", CLINICIAN2, "wrong_role"),
    ("approval", BAKJOUR, "wrong_role"),            # the plan says head_of_department
    ("approval", ADMIN, "wrong_role"),
    ("callback", CLINICIAN2, "wrong_role"),
    ("callback", ACCOUNTADMIN, "wrong_role"),
    ("execution", SUPPORT, "wrong_role"),
    ("execution", HEAD, "wrong_role"),
    ("callback", STOCKHOLM_ONCALL, "other_region"),
    ("harm_assessment", STOCKHOLM_ASSESSOR, "other_region"),
    ("execution", STOCKHOLM_ACCOUNTADMIN, "other_region"),
])
def test_refused_decider(stage: str, decider: Decider, refusal: str) -> None:
    assert code(stage, decider) == refusal


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


@pytest.mark.parametrize(("current", "target", "allowed"), [
    (S.SUBMITTED, S.AWAITING_CALLBACK, True),
    (S.SUBMITTED, S.AWAITING_ASSESSMENT, True),
    (S.SUBMITTED, S.AWAITING_APPROVAL, True),       # harm assessment not required
    (S.SUBMITTED, S.CANCELLED, True),
    (S.SUBMITTED, S.PAPER_FALLBACK, True),
    (S.AWAITING_CALLBACK, S.AWAITING_ASSESSMENT, True),
    (S.AWAITING_CALLBACK, S.AWAITING_APPROVAL, True),
    (S.AWAITING_ASSESSMENT, S.AWAITING_APPROVAL, True),
    (S.AWAITING_ASSESSMENT, S.REJECTED, True),      # do_not_restrict
    (S.AWAITING_APPROVAL, S.EXECUTING, True),
    (S.AWAITING_APPROVAL, S.REJECTED, True),
    (S.AWAITING_APPROVAL, S.CANCELLED, True),
    (S.EXECUTING, S.COMPLETED, True),
    (S.EXECUTING, S.FAILED, True),
    (S.AWAITING_CALLBACK, S.FAILED, True),          # its runs kept failing (models/runs.py)
    (S.AWAITING_ASSESSMENT, S.FAILED, True),
    (S.AWAITING_APPROVAL, S.FAILED, True),
    (S.EXECUTING, S.PAPER_FALLBACK, True),
    (S.PAPER_FALLBACK, S.AWAITING_APPROVAL, True),
    (S.PAPER_FALLBACK, S.EXECUTING, True),
    (S.SUBMITTED, S.EXECUTING, False),               # never past approval
    (S.SUBMITTED, S.COMPLETED, False),
    (S.AWAITING_CALLBACK, S.EXECUTING, False),
    (S.AWAITING_ASSESSMENT, S.EXECUTING, False),
    (S.AWAITING_ASSESSMENT, S.AWAITING_CALLBACK, False),
    (S.AWAITING_APPROVAL, S.AWAITING_ASSESSMENT, False),
    (S.AWAITING_APPROVAL, S.COMPLETED, False),
    (S.EXECUTING, S.CANCELLED, False),               # cancelling only before execution
    (S.EXECUTING, S.REJECTED, False),
    (S.EXECUTING, S.AWAITING_APPROVAL, False),
    (S.COMPLETED, S.EXECUTING, False),
    (S.COMPLETED, S.CANCELLED, False),
    (S.REJECTED, S.AWAITING_APPROVAL, False),
    (S.CANCELLED, S.SUBMITTED, False),
    (S.FAILED, S.EXECUTING, False),
    (S.PAPER_FALLBACK, S.COMPLETED, False),
    (S.SUBMITTED, S.SUBMITTED, False),
])
def test_transition(current: OrderStatus, target: OrderStatus, allowed: bool) -> None:
    assert can_transition(current, target) is allowed
    if allowed:
        check_transition(current, target)
    else:
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
