"""Load a region's staff and care units from its HSA catalogue export: `restriction-orders directory import`.

Every row of both files is checked first (models/directory_file.py) and every problem is reported with its
line; nothing is written unless both files are valid. Then one transaction adds and updates people and units
and deactivates the people of the file's regions who are not in it (never deletes them: orders and the audit
log name them). Every change is an audit event. `dry_run` computes the same changes and writes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.directory_file import (
    Person,
    Problem,
    StaffRow,
    Unit,
    UnitRow,
    check_references,
    parse_staff,
    parse_units,
    scope,
)
from models.tables import CareUnit, Staff
from tasks.adapters import Adapters, audit
from tasks.adapters.directory import ROLES

ACTOR = "directory-import"
STAFF_FIELDS = ("name", "email", "phone", "roles", "unit_hsa_id", "region", "active")
UNIT_FIELDS = ("name", "region", "head_hsa_id")


@dataclass(frozen=True)
class Change:
    table: Literal["staff", "unit"]
    kind: Literal["add", "update", "deactivate"]
    hsa_id: str
    fields: dict[str, tuple[Any, Any]]   # field -> (before, after); before is None when added

    @property
    def action(self) -> str:
        return f"directory_{self.table}_{self.kind}"

    def describe(self) -> str:
        what = "person" if self.table == "staff" else "vårdenhet"
        if self.kind == "add":
            return f"+ ny {what} {self.hsa_id}: " + ", ".join(f"{k}={_shown(v)}" for k, (_, v) in self.fields.items())
        if self.kind == "deactivate":
            return f"- avaktiveras {self.hsa_id} (finns inte i filen; tas inte bort)"
        return f"~ ändras {what} {self.hsa_id}: " + ", ".join(
            f"{k} {_shown(a)} -> {_shown(b)}" for k, (a, b) in self.fields.items())


def _shown(v: Any) -> str:
    if isinstance(v, list | tuple):
        return ";".join(v) or "-"
    return "-" if v is None or v == "" else str(v).lower() if isinstance(v, bool) else str(v)


@dataclass
class ImportResult:
    problems: list[Problem] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    applied: bool = False


def _read(path: Path, problems: list[Problem]) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(path.name, 0, "", f"är inte UTF-8 (byte {exc.start}); spara filen som UTF-8"))
    except OSError as exc:
        problems.append(Problem(path.name, 0, "", f"kan inte läsas ({exc.strerror or type(exc).__name__})"))
    return None


def _diff(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    if before is None:
        return {k: (None, v) for k, v in after.items()}
    return {k: (before[k], v) for k, v in after.items() if before[k] != v}


def _staff_values(r: StaffRow) -> dict[str, Any]:
    return {"name": r.name, "email": r.email, "phone": r.phone, "roles": list(r.roles),
            "unit_hsa_id": r.unit_hsa_id, "region": r.region, "active": r.active}


def _unit_values(u: UnitRow) -> dict[str, Any]:
    return {"name": u.name, "region": u.region, "head_hsa_id": u.head_hsa_id}


def plan(s: Session, regions: list[str], staff_text: str, staff_file: str, units_text: str | None = None,
         units_file: str = "") -> ImportResult:
    """The changes the files would make to the directory in `s`, or every problem that stops them."""
    result = ImportResult()
    staff_rows = parse_staff(staff_text, staff_file, regions=regions, roles=ROLES, problems=result.problems)
    unit_rows = ([] if units_text is None else
                 parse_units(units_text, units_file, regions=regions, problems=result.problems))
    people = {p.hsa_id: p for p in s.scalars(select(Staff))}
    units = {u.hsa_id: u for u in s.scalars(select(CareUnit))}
    if not staff_rows and not result.problems:
        result.problems.append(Problem(staff_file, 0, "", "innehåller ingen person; en fullständig import "
                                                          "skulle avaktivera hela regionen"))
    check_references(staff_rows, unit_rows, staff_file=staff_file, units_file=units_file,
                     existing_people={h: Person(p.active, tuple(p.roles or ()), p.region) for h, p in people.items()},
                     existing_units={h: Unit(u.region, u.head_hsa_id) for h, u in units.items()},
                     problems=result.problems)
    if result.problems:
        return result
    _unit_changes(unit_rows, units, result)
    _staff_changes(staff_rows, people, result)
    return result


def _unit_changes(rows: list[UnitRow], units: dict[str, CareUnit], result: ImportResult) -> None:
    for u in rows:
        old = units.get(u.hsa_id)
        before = None if old is None else {k: getattr(old, k) for k in UNIT_FIELDS}
        diff = _diff(before, _unit_values(u))
        if diff:
            result.changes.append(Change("unit", "add" if old is None else "update", u.hsa_id, diff))
        else:
            result.unchanged += 1


def _staff_changes(rows: list[StaffRow], people: dict[str, Staff], result: ImportResult) -> None:
    """Additions and updates, then the leavers: people of the file's regions who are not in it."""
    for r in rows:
        old = people.get(r.hsa_id)
        before = None if old is None else {k: getattr(old, k) for k in STAFF_FIELDS}
        if before is not None:
            before["roles"] = list(before["roles"] or [])
        diff = _diff(before, _staff_values(r))
        if diff:
            result.changes.append(Change("staff", "add" if old is None else "update", r.hsa_id, diff))
        else:
            result.unchanged += 1
    in_file, regions_in_file = {r.hsa_id for r in rows}, scope(rows)
    for hsa_id, p in sorted(people.items()):
        if hsa_id not in in_file and p.active and p.region in regions_in_file:
            result.changes.append(Change("staff", "deactivate", hsa_id, {"active": (True, False)}))


def apply(s: Session, changes: list[Change], *, actor: str, at: datetime, source: dict[str, str]) -> None:
    """Write the changes and one audit event each, in the caller's transaction."""
    for c in changes:
        model: type[Staff] | type[CareUnit] = Staff if c.table == "staff" else CareUnit
        row: Any = s.get(model, c.hsa_id)
        if row is None:
            row = model(hsa_id=c.hsa_id)
            s.add(row)
        for k, (_, after) in c.fields.items():
            setattr(row, k, after)
        audit.record(s, actor=actor, action=c.action, channel="cli", at=at,
                     detail={"hsa_id": c.hsa_id, "changed": {k: [a, b] for k, (a, b) in c.fields.items()},
                             **source})


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def import_directory(ad: Adapters, staff_path: Path, units_path: Path | None = None, *, dry_run: bool = False,
                     actor: str = ACTOR, now: datetime | None = None) -> ImportResult:
    """Check both files, then (unless `dry_run`) apply every change in one transaction."""
    problems: list[Problem] = []
    staff_text = _read(staff_path, problems)
    units_text = _read(units_path, problems) if units_path else None
    if problems or staff_text is None:
        return ImportResult(problems=problems)
    at = now or ad.now()
    with ad.db.session() as s:
        result = plan(s, sorted(ad.regions), staff_text, staff_path.name, units_text,
                      units_path.name if units_path else "")
        if result.problems or dry_run or not result.changes:
            s.rollback()
            return result
        source = {"staff_file": staff_path.name, "staff_sha256": _digest(staff_text)}
        if units_path and units_text is not None:
            source |= {"units_file": units_path.name, "units_sha256": _digest(units_text)}
        apply(s, result.changes, actor=actor, at=at, source=source)
        audit.record(s, actor=actor, action="directory_imported", channel="cli", at=at,
                     detail={**source, "changes": len(result.changes), "unchanged": result.unchanged})
    result.applied = True
    return result
