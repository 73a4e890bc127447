"""The routine, written once: order types, stages, who decides them, what each decision does, and the plan.

This is the process definition (as SpiffWorkflow keeps a definition apart from its running instances). The
flow (`flows/order.py`), the Prefect run inputs, the API and page routes, the queues' SQL filters, the
emails and the CLI all read it; nothing else may say which stage an order waits in, who may decide it or
where a decision leads. Pure data and pure functions, no I/O.

An order's life: received → its stages planned → the planned human stages in `HUMAN_STAGES` order (each
either waits for a person or is recorded as *not required*, with the rule that said so) → execution (by the
gateway, or by an account administrator: the `execution` stage) → completed, and confirmation emails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel

from models.calendar import WorkingHours, is_office_hours
from models.schemas import ApprovalDecision, AssessmentDecision, CallbackRecord, ExecutionRecord
from models.status import OrderStatus


class Stage(StrEnum):
    CALLBACK = "callback"
    HARM_ASSESSMENT = "harm_assessment"
    APPROVAL = "approval"
    EXECUTION = "execution"


# --- order types ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OrderType:
    code: str
    flow_name: str          # the Prefect flow and deployment name (prefect.yaml, the UI)
    label_sv: str
    description_sv: str     # the flow's description in the Prefect UI
    care_only: bool         # only on care's initiative (DOMAIN: guardian blocks, minor access)
    has_actions: bool       # seal_journal / lock_login chosen on the form
    reviewed: bool          # an executed care-initiated order gets a review date (regular re-assessment)


ORDER_TYPES: dict[str, OrderType] = {t.code: t for t in (
    OrderType("seal_or_lock", "seal-or-lock", "Försegling och/eller låsning",
              "Försegla 1177 journal, låsa inloggningen till 1177 e-tjänster, eller båda.",
              care_only=False, has_actions=True, reviewed=True),
    OrderType("restore_access", "restore-access", "Återställande av direktåtkomst",
              "Häva en försegling eller låsning.", care_only=False, has_actions=True, reviewed=False),
    OrderType("block_guardian", "block-guardian", "Borttagande av direktåtkomst för vårdnadshavare",
              "Ta bort en vårdnadshavares tillgång till ett barns journal och e-tjänster.",
              care_only=True, has_actions=False, reviewed=True),
    OrderType("minor_access", "minor-access", "Ge eller ta bort tillgång till minderårigs journal (13–15 år)",
              "Ge eller ta bort tillgång till journalen för ett barn som är 13–15 år, eller för dess vårdnadshavare.",
              care_only=True, has_actions=False, reviewed=False),
)}
FLOW_NAMES: dict[str, str] = {t.code: t.flow_name for t in ORDER_TYPES.values()}
ORDER_FLOW_NAMES: tuple[str, ...] = tuple(FLOW_NAMES.values())


# --- who decides ----------------------------------------------------------------------------------------

Scope = Literal["region", "own_region", "unit_head"]


@dataclass(frozen=True)
class Decider:
    """A role that may decide a stage, and which of the stage's orders are that person's.

    `region`: orders of the decider's region (a person without a region works for every region);
    `own_region`: orders of the decider's region only; `unit_head`: orders of the care unit the decider heads."""
    role: str
    scope: Scope


# The roles as people read them (pages, emails: "who assessed and approved").
ROLE_LABELS_SV: dict[str, str] = {
    "clinician": "Vårdpersonal",
    "assessor": "Menprövare",
    "head_of_department": "Verksamhetschef",
    "support": "Ärendehanterare (support)",
    "account_admin": "Kontoadministratör",
    "on_call": "Beredskap",
    "bakjour": "Bakjour",
    "admin": "Administratör",
}


# --- what a decision does -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    action: str                     # the audit action of the accepted decision
    ends: OrderStatus | None = None  # the order ends (or, for approval, moves to execution); None: next stage


@dataclass(frozen=True)
class StageDef:
    stage: Stage
    status: OrderStatus             # the order waits in this status while the stage waits for a person
    title_sv: str                   # "Menprövning"
    waiting_sv: str                 # what the order page says while it waits
    api_slug: str                   # POST /api/orders/{reference}/{api_slug}
    queue_slug: str                 # the page /ko/{queue_slug}; the API's GET /api/queues/{stage}
    deciders: tuple[Decider, ...]
    decision: type[BaseModel]       # the body a person sends (the API contract's schema)
    text_field: str | None          # free text: stays in the orders database, never goes to Prefect
    outcome_of: Callable[[Mapping[str, Any]], str]
    outcomes: Mapping[str, Outcome]
    four_eyes: bool = True          # the orderer may not decide it
    role_from_plan: bool = False     # only the role the order's plan names decides (approval: head or bakjour)
    not_assessor_on_care: bool = False  # on care's initiative, not the person who assessed it (four eyes)
    button_sv: str = "Registrera beslut"

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.role for d in self.deciders))

    def outcome(self, decision: Mapping[str, Any]) -> str:
        return self.outcome_of(decision)


STAGES: dict[Stage, StageDef] = {s.stage: s for s in (
    StageDef(Stage.CALLBACK, OrderStatus.AWAITING_CALLBACK, "Återuppringning",
             "Väntar på att beredskapen ringer upp beställaren", "callback", "aterringning",
             (Decider("on_call", "region"), Decider("support", "region")),
             CallbackRecord, "note", lambda d: "done", {"done": Outcome("callback_recorded")},
             four_eyes=False, button_sv="Registrera återuppringning"),
    StageDef(Stage.HARM_ASSESSMENT, OrderStatus.AWAITING_ASSESSMENT, "Menprövning",
             "Väntar på menprövning", "assessment", "menprovning",
             (Decider("assessor", "region"),),
             AssessmentDecision, "rationale", lambda d: str(d["decision"]),
             {"restrict": Outcome("assessed"),
              "do_not_restrict": Outcome("assessed_no_restriction", OrderStatus.REJECTED)},
             button_sv="Registrera menprövning"),
    StageDef(Stage.APPROVAL, OrderStatus.AWAITING_APPROVAL, "Godkännande",
             "Väntar på godkännande", "approval", "godkannande",
             (Decider("head_of_department", "unit_head"), Decider("bakjour", "own_region")),
             ApprovalDecision, "comment", lambda d: "approve" if d["approved"] else "reject",
             {"approve": Outcome("approved", OrderStatus.EXECUTING),
              "reject": Outcome("approval_rejected", OrderStatus.REJECTED)},
             role_from_plan=True, not_assessor_on_care=True),
    StageDef(Stage.EXECUTION, OrderStatus.EXECUTING, "Manuellt verkställande",
             "Verkställs av kontoadministratör i 1177 administrationsverktyg", "execution", "verkstallande",
             (Decider("account_admin", "region"),),
             ExecutionRecord, None, lambda d: "done", {"done": Outcome("executed", OrderStatus.COMPLETED)},
             button_sv="Bekräfta verkställande"),
)}
# The stages a person decides before execution, in the order the routine takes them.
HUMAN_STAGES: tuple[Stage, ...] = (Stage.CALLBACK, Stage.HARM_ASSESSMENT, Stage.APPROVAL)
STAGE_STATUS: dict[Stage, OrderStatus] = {s: d.status for s, d in STAGES.items()}
STAGE_OF_STATUS: dict[OrderStatus, Stage] = {d.status: s for s, d in STAGES.items()}
BY_API_SLUG: dict[str, StageDef] = {d.api_slug: d for d in STAGES.values()}
BY_QUEUE_SLUG: dict[str, StageDef] = {d.queue_slug: d for d in STAGES.values()}


def stage_def(stage: str) -> StageDef:
    return STAGES[Stage(stage)]


# --- the plan -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    """One stage of an order's plan: required or not, who decides (a role of the stage's deciders), the
    stable id of the rule that decided, and why (Swedish, shown on the order page and in the audit log)."""
    required: bool
    role: str | None
    rule: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"required": self.required, "role": self.role, "rule": self.rule, "reason": self.reason}


@dataclass(frozen=True)
class PlanFacts:
    """What the plan depends on."""
    order_type: str
    initiative: str
    urgent: bool


@dataclass(frozen=True)
class StagePlan:
    stages: dict[Stage, Planned] = field(default_factory=dict)

    def required(self, stage: str) -> bool:
        p = self.stages.get(Stage(stage))
        return bool(p and p.required)

    def role(self, stage: str) -> str | None:
        p = self.stages.get(Stage(stage))
        return p.role if p else None

    def as_json(self) -> dict[str, dict[str, Any]]:
        return {s.value: p.as_json() for s, p in self.stages.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> StagePlan:
        out: dict[Stage, Planned] = {}
        for name, p in (data or {}).items():
            if name in Stage.__members__.values():
                out[Stage(name)] = Planned(bool(p.get("required")), p.get("role"), str(p.get("rule", "")),
                                           str(p.get("reason", "")))
        return cls(out)


def callback_promise_sv(callback_minutes: int | None) -> str:
    """When the orderer is called back, in the region's own promise; without one (the region's urgent line is
    answered at once, or no promise is set) no time is promised."""
    return f"inom {callback_minutes} minuter" if callback_minutes else "snarast"


def _callback(facts: PlanFacts, callback_minutes: int | None) -> Planned:
    if facts.urgent:
        return Planned(True, "on_call", "urgent_callback",
                       f"Brådskande: beredskapen ringer upp {callback_promise_sv(callback_minutes)}.")
    return Planned(False, None, "not_urgent", "Inte brådskande: ingen återuppringning.")


def _harm_assessment(facts: PlanFacts) -> Planned:
    if facts.initiative == "patient":
        return Planned(False, None, "patient_own_request",
                       "Ingen menprövning: patienten begär själv ändringen av sin egen åtkomst.")
    if facts.order_type == "block_guardian":
        return Planned(True, "assessor", "guardian_block_harm_test",
                       "Menprövning krävs: betydande men för barnet (OSL 12 kap. 3 §).")
    return Planned(True, "assessor", "care_initiative_harm_test", "Menprövning krävs: vårdens initiativ (OSL 25 kap.).")


BAKJOUR_APPROVES = Planned(True, "bakjour", "urgent_out_of_hours_bakjour",
                           "Brådskande utanför kontorstid: bakjouren godkänner.")
HEAD_APPROVES = Planned(True, "head_of_department", "head_of_department_approves",
                        "Verksamhetschefen för den beställande vårdenheten godkänner.")


def _approval(facts: PlanFacts, at: datetime, hours: WorkingHours) -> Planned:
    return BAKJOUR_APPROVES if facts.urgent and not is_office_hours(at, hours) else HEAD_APPROVES


def plan(facts: PlanFacts, *, at: datetime, hours: WorkingHours, callback_minutes: int | None) -> StagePlan:
    """Which human stages an order needs and who decides them; `at` is when it was submitted."""
    return StagePlan({Stage.CALLBACK: _callback(facts, callback_minutes),
                      Stage.HARM_ASSESSMENT: _harm_assessment(facts),
                      Stage.APPROVAL: _approval(facts, at, hours)})


@dataclass(frozen=True)
class Replanned:
    plan: StagePlan
    changed: tuple[Stage, ...]      # the stages whose plan changed (each gets a `stage_planned` audit row)


def replan_urgent(current: StagePlan, status: OrderStatus, *, at: datetime, hours: WorkingHours,
                  callback_minutes: int | None, approval_pending: bool) -> Replanned:
    """An order made urgent after it was planned. The callback clock now runs beside the order's steps
    (its run is past its callback stage: stages follow the status), so the plan says so for the people
    reading it; and out of office hours the bakjour approves, as if it had been submitted urgent, unless
    approval is already done or being decided."""
    if not current.stages:
        return Replanned(current, ())
    stages = dict(current.stages)
    changed: list[Stage] = []
    if not current.required(Stage.CALLBACK):
        stages[Stage.CALLBACK] = Planned(
            True, "on_call", "made_urgent",
            f"Gjord brådskande av beredskap eller support: återuppringning {callback_promise_sv(callback_minutes)}.")
        changed.append(Stage.CALLBACK)
    approval = current.stages.get(Stage.APPROVAL)
    if (status in APPROVAL_REPLANNABLE and approval is not None and approval.required
            and approval.role == "head_of_department" and not approval_pending and not is_office_hours(at, hours)):
        stages[Stage.APPROVAL] = BAKJOUR_APPROVES
        changed.append(Stage.APPROVAL)
    return Replanned(StagePlan(stages), tuple(changed))


# Where an order made urgent can still get the bakjour as approver: before its approval is decided.
APPROVAL_REPLANNABLE: frozenset[OrderStatus] = frozenset(
    {OrderStatus.AWAITING_ASSESSMENT, OrderStatus.AWAITING_APPROVAL})


# --- where the order goes -------------------------------------------------------------------------------

def first_status(plan_: StagePlan) -> OrderStatus:
    """The status a received order opens with: its first required human stage, else execution."""
    return _first_required(plan_, HUMAN_STAGES)


def next_status(plan_: StagePlan, after: Stage) -> OrderStatus:
    """Where an order goes when `after` is done and its outcome does not end it."""
    return _first_required(plan_, HUMAN_STAGES[HUMAN_STAGES.index(after) + 1:])


def _first_required(plan_: StagePlan, stages: tuple[Stage, ...]) -> OrderStatus:
    for st in stages:
        if plan_.required(st):
            return STAGE_STATUS[st]
    return OrderStatus.EXECUTING


def decision_leads_to(plan_: StagePlan, stage: Stage, outcome: str) -> tuple[str, OrderStatus]:
    """(audit action, next status) of an accepted decision."""
    o = STAGES[stage].outcomes[outcome]
    return o.action, o.ends if o.ends is not None else next_status(plan_, stage)


def suspend_key(stage: str, attempt: int) -> str:
    """The key of a stage's suspension: a refused decision leaves the order waiting under a fresh one."""
    return f"{stage.replace('_', '-')}-{attempt}"


# --- confirmations --------------------------------------------------------------------------------------

Recipient = Literal["head", "orderer", "support"]
# The emails an order's final status calls for (DOMAIN: confirmations to the head and the orderer).
CONFIRMATIONS: dict[OrderStatus, tuple[Recipient, ...]] = {
    OrderStatus.COMPLETED: ("head", "orderer"),
    OrderStatus.REJECTED: ("orderer",),
    OrderStatus.CANCELLED: ("orderer",),
    OrderStatus.FAILED: ("orderer", "support"),
}


# --- where an order stands ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DecisionFacts:
    """An accepted decision as the progress view needs it."""
    stage: str
    decided_by: str
    decided_at: datetime
    outcome: str
    detail: Mapping[str, Any]
    text: str = ""


StageState = Literal["pending", "waiting", "done", "not_required"]


@dataclass(frozen=True)
class StageProgress:
    stage: Stage
    required: bool
    rule: str
    reason: str
    state: StageState
    role: str | None = None             # who decides it (the plan's role), while it waits
    decided_by: str | None = None
    decided_at: datetime | None = None
    outcome: dict[str, Any] | None = None


def _outcome_of(stage: Stage, d: DecisionFacts) -> dict[str, Any]:
    """What a decision decided: for the harm assessment everything the approver must see."""
    if stage == Stage.HARM_ASSESSMENT:
        return {"harm_found": bool(d.detail.get("harm_found")), "decision": d.outcome, "rationale": d.text,
                "review_after_days": d.detail.get("review_after_days")}
    if stage == Stage.APPROVAL:
        return {"approved": d.outcome == "approve", "comment": d.text}
    if stage == Stage.CALLBACK:
        return {"note": d.text}
    return {"system_reference": str(d.detail.get("system_reference", ""))}


# Execution is not planned: every order that gets that far is executed, by the gateway or a person.
EXECUTION_PLANNED = Planned(True, None, "execution", "Verkställs i 1177:s administrationsverktyg, automatiskt "
                                                      "eller av en kontoadministratör.")


def progress(plan_: StagePlan, status: OrderStatus, accepted: list[DecisionFacts], *,
             executed_by: str | None = None, executed_at: datetime | None = None) -> list[StageProgress]:
    """Each stage of the order: done (who, when, outcome), waiting (for which role), pending, or not required
    (with the rule that said so). Execution is done by the gateway (`executed_by` system) or a person."""
    out: list[StageProgress] = []
    by_stage = {d.stage: d for d in accepted}
    for stage in (*HUMAN_STAGES, Stage.EXECUTION):
        planned = plan_.stages.get(stage) or EXECUTION_PLANNED
        d = by_stage.get(stage.value)
        if not planned.required and d is None:
            out.append(StageProgress(stage, False, planned.rule, planned.reason, "not_required"))
        elif d is not None:
            out.append(StageProgress(stage, True, planned.rule, planned.reason, "done", planned.role, d.decided_by,
                                     d.decided_at, _outcome_of(stage, d)))
        elif stage == Stage.EXECUTION and status == OrderStatus.COMPLETED:
            out.append(StageProgress(stage, True, planned.rule, planned.reason, "done", None, executed_by,
                                     executed_at, {}))
        elif STAGE_STATUS[stage] == status:
            out.append(StageProgress(stage, True, planned.rule, planned.reason, "waiting", planned.role))
        else:
            out.append(StageProgress(stage, True, planned.rule, planned.reason, "pending", planned.role))
    return out
