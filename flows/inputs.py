"""What a person hands back to a suspended order run, one model per human step.

No field has a default that would make an unsafe decision: the server enforces every required field.
Free text (rationale, comments) is never sent through Prefect; it stays in the orders database and
the run input points at it with `decision_id`.
"""

from __future__ import annotations

from typing import Literal

from prefect.input import RunInput


class _Decision(RunInput):
    decided_by: str              # the decider's HSA-id; re-checked against the staff directory
    decision_id: int | None = None


class CallbackInput(_Decision):
    pass


class HarmAssessmentInput(_Decision):
    harm_found: bool
    decision: Literal["restrict", "do_not_restrict"]
    review_after_days: int | None = None


class ApprovalInput(_Decision):
    approved: bool


class ExecutionInput(_Decision):
    system_reference: str


INPUTS: dict[str, type[_Decision]] = {
    "callback": CallbackInput,
    "harm_assessment": HarmAssessmentInput,
    "approval": ApprovalInput,
    "execution": ExecutionInput,
}
