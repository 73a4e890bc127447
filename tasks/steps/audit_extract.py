"""Reading the audit log for people: a log extract for one patient, and random sample checks.

- Patient log extract (PDL 8 kap. 5 §, HSLF-FS 2016:40 4 kap. 10 §): every audit event on the patient's
  orders and every search by the patient's personal number — who (HSA-id, name, roles, unit), what, when
  (UTC and Swedish time), on which order, from which state to which. Producing it is itself a search by
  personal number and is logged as `search_by_personal_number` before the extract is read, so the extract
  shows the search that produced it.
- Sample checks (HSLF-FS 2016:40 4 kap. 9 §: systematic, recurrent checks of access, documented): a random
  sample of the reads and searches in a period, plus every refused read and every read from outside the
  order's region flagged for a closer look. The check itself is logged as `sample_check`.

The audit log is append-only (database triggers, see the first migration): this module only adds rows.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models import personnummer
from models.calendar import local
from models.status import LABELS_SV, OrderStatus
from models.tables import AuditEvent, CareUnit, Order, Staff
from tasks.adapters import audit
from tasks.adapters.database import Database

SEARCH_ACTION = "search_by_personal_number"
SAMPLE_CHECK_ACTION = "sample_check"
# Events where somebody looked at personal data: what sample checks draw from.
READ_ACTIONS = ("order_read", "order_read_refused", SEARCH_ACTION)

ACTION_LABELS_SV: dict[str, str] = {
    "submitted": "Beställningen skickades in",
    "received": "Mottagen och planerad",
    "validated": "Kontrollerad på nytt vid mottagandet",
    "validation_failed": "Avslagen: uppfyller inte längre reglerna",
    "due_rescheduled": "Ny klar-senast-tid efter återuppringning",
    "stage_planned": "Steg planerat",
    "run_started": "Körning startad",
    "order_read": "Läste beställningen",
    "order_read_refused": "Nekades läsning av beställningen",
    "decision_proposed": "Beslut registrerat",
    "decision_refused": "Beslut nekat",
    "callback_recorded": "Återuppringning registrerad",
    "assessed": "Menprövning: begränsa",
    "assessed_no_restriction": "Menprövning: begränsa inte",
    "approved": "Godkänd",
    "approval_rejected": "Avslagen",
    "executed": "Verkställd",
    "execution_refused": "Verkställandet nekades",
    "gateway_unavailable": "1177-systemet otillgängligt: pappersblankett",
    "cancelled": "Återkallad",
    "overdue": "Försenad: påminnelse skickad",
    "review_reminder": "Påminnelse om omprövning skickad",
    "review_kept": "Omprövning: begränsningen behålls",
    "review_restore_ordered": "Omprövning: återställande beställt",
    "started_by_review": "Startad efter omprövning",
    SEARCH_ACTION: "Sökning på personnummer",
    "orders_exported": "Export av beställningar",
    SAMPLE_CHECK_ACTION: "Stickprovskontroll av loggen",
}


def action_label(action: str) -> str:
    if action in ACTION_LABELS_SV:
        return ACTION_LABELS_SV[action]
    if action.startswith("status:"):
        status = action.removeprefix("status:")
        try:
            return f"Status: {LABELS_SV[OrderStatus(status)]}"
        except ValueError:
            return action
    return action


@dataclass(frozen=True)
class ExtractRow:
    id: int
    at: datetime
    at_local: str
    actor: str
    actor_name: str
    actor_roles: list[str]
    actor_unit: str
    actor_region: str
    action: str
    action_label: str
    order_reference: str | None
    patient_masked: str
    from_status: str | None
    to_status: str | None
    channel: str
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = local(self.at).isoformat()
        return d


def _rows(s: Session, events: Iterable[AuditEvent]) -> list[ExtractRow]:
    events = list(events)
    actors = {e.actor for e in events}
    people = {p.hsa_id: p for p in s.scalars(select(Staff).where(Staff.hsa_id.in_(actors)))} if actors else {}
    units = {u.hsa_id: u.name for u in s.scalars(select(CareUnit))}
    out = []
    for e in events:
        p = people.get(e.actor)
        name = "Systemet" if e.actor == "system" else (p.name if p else "Okänd (finns inte i katalogen)")
        out.append(ExtractRow(
            id=e.id, at=e.at, at_local=f"{local(e.at):%Y-%m-%d %H:%M:%S}", actor=e.actor, actor_name=name,
            actor_roles=list(p.roles) if p else [], actor_unit=units.get(p.unit_hsa_id or "", p.unit_hsa_id or "")
            if p else "", actor_region=(p.region or "") if p else "", action=e.action, action_label=action_label(e.action),
            order_reference=e.order_reference, patient_masked=personnummer.mask(e.patient_pnr or ""),
            from_status=e.from_status, to_status=e.to_status, channel=e.channel, detail=dict(e.detail or {})))
    return out


@dataclass(frozen=True)
class PatientExtract:
    patient_masked: str
    produced_at: datetime
    produced_by: str
    orders: list[str]
    rows: list[ExtractRow]

    def as_json(self) -> dict[str, Any]:
        return {"patient": self.patient_masked, "produced_at": local(self.produced_at).isoformat(),
                "produced_by": self.produced_by, "orders": self.orders,
                "events": [r.as_json() for r in self.rows]}


def patient_events(s: Session, pnr: str) -> tuple[list[str], list[AuditEvent]]:
    """(the patient's order references, every audit event on them or naming the patient), oldest first."""
    refs = list(s.scalars(select(Order.reference).where(Order.patient_pnr == pnr).order_by(Order.id)))
    q = select(AuditEvent).where(or_(AuditEvent.patient_pnr == pnr, AuditEvent.order_reference.in_(refs)))
    return refs, list(s.scalars(q.order_by(AuditEvent.at, AuditEvent.id)))


def patient_extract(db: Database, actor: str, personal_number: str, now: datetime) -> PatientExtract:
    """Log the search, then read the extract. Raises personnummer.InvalidPersonalNumber."""
    pnr = personnummer.parse(personal_number, local(now).date()).digits
    with db.session() as s:
        refs = list(s.scalars(select(Order.reference).where(Order.patient_pnr == pnr)))
        audit.record(s, actor=actor, action=SEARCH_ACTION, patient_pnr=pnr, at=now,
                     detail={"purpose": "patient_log_extract", "orders": len(refs)})
        s.flush()
        refs, events = patient_events(s, pnr)
        return PatientExtract(personnummer.mask(pnr), now, actor, refs, _rows(s, events))


# --- sample checks -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleCheck:
    since: datetime
    until: datetime
    seed: int
    population: int
    sampled: list[ExtractRow]
    flagged: list[tuple[ExtractRow, str]]  # (event, why: refused | other_region)

    def as_json(self) -> dict[str, Any]:
        return {"since": local(self.since).isoformat(), "until": local(self.until).isoformat(), "seed": self.seed,
                "population": self.population, "sampled": [r.as_json() for r in self.sampled],
                "flagged": [{**r.as_json(), "why": why} for r, why in self.flagged]}


def flag_reason(event: AuditEvent, actor: Staff | None, order_region: str | None) -> str | None:
    """Why a read deserves a closer look, or None."""
    if event.action == "order_read_refused":
        return "refused"
    if actor is not None and actor.region and order_region and actor.region != order_region:
        return "other_region"
    return None


def sample_check(db: Database, actor: str, now: datetime, *, days: int = 30, size: int = 20,
                 seed: int | None = None) -> SampleCheck:
    """Draw `size` reads and searches at random from the last `days` days, flag the suspicious ones, and
    log the check (with the seed, so the same draw can be repeated)."""
    if not (1 <= days <= 3660 and 1 <= size <= 500):
        raise ValueError("days 1-3660, size 1-500")
    seed = seed if seed is not None else secrets.randbelow(2**31)
    since, until = now - timedelta(days=days), now
    with db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(
            AuditEvent.action.in_(READ_ACTIONS), AuditEvent.at >= since, AuditEvent.at <= until)
            .order_by(AuditEvent.id)))
        picked = sorted(random.Random(seed).sample(events, min(size, len(events))), key=lambda e: e.id)
        actors = {p.hsa_id: p for p in s.scalars(select(Staff).where(Staff.hsa_id.in_({e.actor for e in events})))} \
            if events else {}
        refs = {e.order_reference for e in events if e.order_reference}
        regions = dict(s.execute(select(Order.reference, Order.region).where(Order.reference.in_(refs)))
                       .tuples().all()) if refs else {}
        flagged_events = [(e, why) for e in events
                          if (why := flag_reason(e, actors.get(e.actor), regions.get(e.order_reference or "")))]
        rows = {r.id: r for r in _rows(s, {*picked, *(e for e, _ in flagged_events)})}
        audit.record(s, actor=actor, action=SAMPLE_CHECK_ACTION, at=now, detail={
            "days": days, "size": size, "seed": seed, "population": len(events),
            "sampled_ids": [e.id for e in picked], "flagged_ids": [e.id for e, _ in flagged_events]})
        return SampleCheck(since, until, seed, len(events), [rows[e.id] for e in picked],
                           [(rows[e.id], why) for e, why in flagged_events])
