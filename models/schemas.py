"""Pydantic models of the HTTP contract (`../shared/api-contract.md`).

`OrderRequest` is the typed order once the rule engine has accepted it; the raw body is checked field
by field in `models.rules` so that every problem is reported at once with the contract's codes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from models.text import BIDI_CODE, BIDI_MESSAGE, has_bidi_control

OrderType = Literal["seal_or_lock", "restore_access", "block_guardian", "minor_access"]
Initiative = Literal["patient", "care"]
Action = Literal["seal_journal", "lock_login"]
Recipient = Literal["minor", "guardian"]

ORDER_TYPES: tuple[str, ...] = ("seal_or_lock", "restore_access", "block_guardian", "minor_access")
INITIATIVES: tuple[str, ...] = ("patient", "care")
ACTIONS: tuple[str, ...] = ("seal_journal", "lock_login")
REASON_MAX = 2000

ORDER_TYPE_LABELS_SV: dict[str, str] = {
    "seal_or_lock": "Försegling och/eller låsning",
    "restore_access": "Återställande av direktåtkomst",
    "block_guardian": "Borttagande av direktåtkomst för vårdnadshavare",
    "minor_access": "Ge eller ta bort tillgång till minderårigs journal (13–15 år)",
}
ACTION_LABELS_SV: dict[str, str] = {"seal_journal": "Försegla 1177 journal", "lock_login": "Låsa inloggning"}
INITIATIVE_LABELS_SV: dict[str, str] = {"patient": "Patientens önskemål", "care": "Vårdens initiativ"}


class MinorAccess(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grant: bool
    recipient: Recipient
    child_consent: bool = False


class OrderRequest(BaseModel):
    """The body of `POST /api/orders`. Personal numbers are normalised to 12 digits once accepted."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": {
        "order_type": "seal_or_lock", "initiative": "care", "actions": ["seal_journal", "lock_login"],
        "patient_personal_number": "19121212-1212", "urgent": False, "reason": "Hot mot patienten",
        "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar"}})

    order_type: OrderType
    initiative: Initiative
    actions: list[Action] = Field(default_factory=list)
    patient_personal_number: str
    patient_protected_identity: bool = False
    guardian_personal_number: str | None = None
    guardian_protected_identity: bool = False
    minor_access: MinorAccess | None = None
    identity_checked_in_person: bool = False
    urgent: bool = False
    reason: str = Field(default="", max_length=REASON_MAX)
    care_unit_hsa_id: str
    region: str
    # The orderer's own number for on-call's callback, E.164 once accepted (models/phone.py); staff data.
    callback_phone: str | None = None


class Problem(BaseModel):
    field: str
    code: str
    message: str


class ErrorResponse(BaseModel):
    errors: list[Problem]


class ValidationResponse(BaseModel):
    errors: list[Problem]
    warnings: list[Problem]


class SubmitResponse(BaseModel):
    reference: str
    status: str
    urgent: bool
    due_at: datetime | None
    callback_due_at: datetime | None = None
    warnings: list[Problem] = Field(default_factory=list)


class HistoryEntry(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    at: datetime
    actor: str
    from_: str | None = Field(default=None, alias="from", serialization_alias="from")
    to: str
    note: str | None = None


class StageView(BaseModel):
    """One stage of an order as `GET /api/orders/{reference}` shows it (tasks/steps/progress.py)."""
    stage: str
    required: bool
    rule: str
    reason: str
    state: Literal["pending", "waiting", "done", "not_required"]
    role: str | None = None          # who decides it (the plan's role)
    decided_by: str | None = None
    decided_at: datetime | None = None
    # For the harm assessment: harm_found, decision, rationale, review_after_days; approval: approved,
    # comment; callback: note; execution: system_reference.
    outcome: dict[str, Any] | None = None


class OrderView(BaseModel):
    reference: str
    order_type: str
    status: str
    urgent: bool
    patient: str
    created_at: datetime
    due_at: datetime | None
    callback_due_at: datetime | None
    history: list[HistoryEntry]
    # Additions (2026-12): null for a reader not entitled to them (forms/actions.py says who is).
    callback_phone: str | None = None
    stages: list[StageView] | None = None


def is_plain_text(value: str) -> bool:
    """Text a person can have typed: no NUL or other control characters (tab and line breaks are fine) and
    no lone surrogates, which no database encoding can store (PostgreSQL refuses NUL, UTF-8 surrogates)."""
    return not any((ord(ch) < 32 and ch not in "\t\n\r") or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF
                   for ch in value)


def _plain(value: str) -> str:
    if not is_plain_text(value):
        raise ValueError("Texten innehåller otillåtna tecken.")
    if has_bidi_control(value):
        # Its own error type, so the API answers with the code `bidi_control` (forms/app.py).
        raise PydanticCustomError(BIDI_CODE, BIDI_MESSAGE)
    return value


FreeText = Annotated[str, AfterValidator(_plain)]


class AssessmentDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    harm_found: bool
    decision: Literal["restrict", "do_not_restrict"]
    rationale: FreeText = Field(default="", max_length=REASON_MAX)
    review_after_days: int | None = Field(default=None, ge=1, le=3650)


class ApprovalDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approved: bool
    comment: FreeText = Field(default="", max_length=REASON_MAX)


class CallbackRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: FreeText = Field(default="", max_length=REASON_MAX)


class ExecutionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system_reference: FreeText = Field(min_length=1, max_length=200)


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: FreeText = Field(default="", max_length=REASON_MAX)
