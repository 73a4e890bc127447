"""Order statuses (the contract's names) and the transitions the routine allows."""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    SUBMITTED = "submitted"
    AWAITING_CALLBACK = "awaiting_callback"
    AWAITING_ASSESSMENT = "awaiting_assessment"
    AWAITING_APPROVAL = "awaiting_approval"
    EXECUTING = "executing"
    COMPLETED = "completed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    PAPER_FALLBACK = "paper_fallback"
    FAILED = "failed"


S = OrderStatus

FINAL: frozenset[OrderStatus] = frozenset({S.COMPLETED, S.REJECTED, S.CANCELLED, S.FAILED})

# Cancelling is allowed until execution starts; paper fallback can hand back to the digital route. Any
# open digital status can end in `failed` (execution refused, or runs that keep failing: models/runs.py).
ALLOWED: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.SUBMITTED: frozenset({S.AWAITING_CALLBACK, S.AWAITING_ASSESSMENT, S.AWAITING_APPROVAL, S.CANCELLED,
                            S.REJECTED, S.PAPER_FALLBACK, S.FAILED}),
    S.AWAITING_CALLBACK: frozenset({S.AWAITING_ASSESSMENT, S.AWAITING_APPROVAL, S.CANCELLED, S.PAPER_FALLBACK,
                                    S.FAILED}),
    S.AWAITING_ASSESSMENT: frozenset({S.AWAITING_APPROVAL, S.REJECTED, S.CANCELLED, S.PAPER_FALLBACK, S.FAILED}),
    S.AWAITING_APPROVAL: frozenset({S.EXECUTING, S.REJECTED, S.CANCELLED, S.PAPER_FALLBACK, S.FAILED}),
    S.EXECUTING: frozenset({S.COMPLETED, S.PAPER_FALLBACK, S.FAILED}),
    S.PAPER_FALLBACK: frozenset({S.AWAITING_CALLBACK, S.AWAITING_ASSESSMENT, S.AWAITING_APPROVAL, S.EXECUTING,
                                 S.CANCELLED, S.REJECTED}),
    S.COMPLETED: frozenset(),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
    S.FAILED: frozenset(),
}

CANCELLABLE: frozenset[OrderStatus] = frozenset(
    {S.SUBMITTED, S.AWAITING_CALLBACK, S.AWAITING_ASSESSMENT, S.AWAITING_APPROVAL, S.PAPER_FALLBACK}
)

LABELS_SV: dict[OrderStatus, str] = {
    S.SUBMITTED: "Inskickad",
    S.AWAITING_CALLBACK: "Väntar på återuppringning",
    S.AWAITING_ASSESSMENT: "Väntar på menprövning",
    S.AWAITING_APPROVAL: "Väntar på godkännande",
    S.EXECUTING: "Verkställs",
    S.COMPLETED: "Klar",
    S.REJECTED: "Avslagen",
    S.CANCELLED: "Återkallad",
    S.PAPER_FALLBACK: "Pappersblankett (reservrutin)",
    S.FAILED: "Misslyckad",
}


class IllegalTransition(ValueError):
    pass


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in ALLOWED[current]


def check_transition(current: OrderStatus, target: OrderStatus) -> None:
    if not can_transition(current, target):
        raise IllegalTransition(f"{current} -> {target}")
