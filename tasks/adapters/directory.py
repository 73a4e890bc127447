"""The staff directory and care units (database tables seeded with demo staff on `make run`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.tables import CareUnit, Staff

ROLES = ("clinician", "assessor", "head_of_department", "support", "account_admin", "on_call", "bakjour", "admin")


def _storable(hsa_id: str) -> bool:
    """Nobody's id holds a NUL or a lone surrogate, and the databases refuse a query with one (PostgreSQL
    refuses NUL; neither can encode a lone surrogate as UTF-8)."""
    if "\x00" in hsa_id:
        return False
    try:
        hsa_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def staff(s: Session, hsa_id: str | None) -> Staff | None:
    if not hsa_id or not _storable(hsa_id):
        return None
    person = s.get(Staff, hsa_id.strip().upper())
    return person if person and person.active else None


def care_units(s: Session) -> dict[str, str]:
    return {u.hsa_id: u.region for u in s.scalars(select(CareUnit))}


def unit(s: Session, hsa_id: str) -> CareUnit | None:
    return s.get(CareUnit, hsa_id) if _storable(hsa_id) else None


def has_role(person: Staff | None, *roles: str) -> bool:
    return person is not None and any(r in person.roles for r in roles)
