"""An order's stages as the API and the pages show them (tasks/steps/progress.py over models.routine.progress)."""
from __future__ import annotations

from sqlalchemy import select

from models.tables import Order
from tasks.adapters import Adapters
from tasks.steps.progress import order_progress
from tests.e2e import body, decide, status, submit

ASSESS = {"harm_found": True, "decision": "restrict", "rationale": "Risk för men.", "review_after_days": 90}


def stages_of(ad: Adapters, reference: str) -> dict[str, tuple[str, str | None]]:
    with ad.db.session() as s:
        order = s.scalars(select(Order).where(Order.reference == reference)).one()
        return {p.stage.value: (p.state, p.decided_by) for p in order_progress(s, order)}


def test_stages_follow_the_order_from_waiting_to_done(ad: Adapters) -> None:
    ref = submit(ad, body())
    assert stages_of(ad, ref) == {"callback": ("not_required", None), "harm_assessment": ("waiting", None),
                                  "approval": ("pending", None), "execution": ("pending", None)}
    decide(ad, ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", ASSESS)
    assert stages_of(ad, ref)["harm_assessment"] == ("done", "DEMO-KALMAR-ASSESSOR")
    assert stages_of(ad, ref)["approval"] == ("waiting", None)
    decide(ad, ref, "approval", "DEMO-KALMAR-HEAD", {"approved": True, "comment": ""})
    assert status(ad, ref) == "completed"
    after = stages_of(ad, ref)
    assert after["approval"] == ("done", "DEMO-KALMAR-HEAD")
    assert after["execution"][0] == "done" and after["execution"][1]


def test_the_assessment_outcome_is_what_the_approver_must_see(ad: Adapters) -> None:
    ref = submit(ad, body())
    decide(ad, ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", ASSESS)
    with ad.db.session() as s:
        order = s.scalars(select(Order).where(Order.reference == ref)).one()
        done = next(p for p in order_progress(s, order) if p.stage.value == "harm_assessment")
    assert done.outcome == {"harm_found": True, "decision": "restrict", "rationale": "Risk för men.",
                            "review_after_days": 90}
