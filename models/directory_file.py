"""A region's staff directory export (CSV) read and checked row by row, every problem with its line.

Two files, UTF-8 (a byte-order mark from a spreadsheet is fine), comma-separated, a header line first:

    staff: hsa_id,name,email,phone,roles,care_unit_hsa_id,region,active   (roles separated by ";")
    units: hsa_id,name,region,head_hsa_id

Pure functions: the caller gives the text and what the rows are checked against (known regions, roles, the
units and people already in the database). Messages are in Swedish, for the operator who fixes the file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

STAFF_COLUMNS = ("hsa_id", "name", "email", "phone", "roles", "care_unit_hsa_id", "region", "active")
UNIT_COLUMNS = ("hsa_id", "name", "region", "head_hsa_id")
# SE + the catalogue owner's 10-digit organisation number + "-" + letters/digits; at most 31 characters.
HSA_ID = re.compile(r"SE[0-9]{10}-[A-Za-z0-9]+")
HSA_MAX = 31
EMAIL = re.compile(r"[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\".]+")
PHONE = re.compile(r"\+?[0-9][0-9 -]*[0-9]")
TRUE, FALSE = {"true", "1", "ja", "yes", "sant"}, {"false", "0", "nej", "no", "falskt"}
NAME_MAX, EMAIL_MAX, PHONE_MAX = 200, 200, 40
HEAD_ROLE = "head_of_department"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int       # 1 is the header; 0: the file as a whole
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field + ': ' if self.field else ''}{self.message}"


@dataclass(frozen=True)
class StaffRow:
    line: int
    hsa_id: str
    name: str
    email: str
    phone: str | None
    roles: tuple[str, ...]
    unit_hsa_id: str | None
    region: str | None
    active: bool


@dataclass(frozen=True)
class UnitRow:
    line: int
    hsa_id: str
    name: str
    region: str
    head_hsa_id: str


@dataclass(frozen=True)
class Person:
    """What the checks need of a person already in the database (or as the import would leave them)."""
    active: bool
    roles: tuple[str, ...]
    region: str | None


@dataclass(frozen=True)
class Unit:
    region: str
    head_hsa_id: str | None


def is_hsa_id(value: str) -> bool:
    return len(value) <= HSA_MAX and HSA_ID.fullmatch(value) is not None


def _plain(value: str) -> bool:
    return not any(ord(ch) < 32 or ord(ch) == 0x7F for ch in value)


def _rows(text: str, name: str, columns: tuple[str, ...],
          problems: list[Problem]) -> list[tuple[int, dict[str, str]]]:
    """(line, values by column) for each non-blank row; a bad header or a row of the wrong width is a problem."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        problems.append(Problem(name, 0, "", "filen är tom; första raden ska vara " + ",".join(columns)))
        return []
    except csv.Error as exc:
        problems.append(Problem(name, 1, "", f"kan inte läsas som CSV ({exc})"))
        return []
    missing = [c for c in columns if c not in header]
    unknown = [h for h in header if h not in columns]
    if missing or unknown or len(set(header)) != len(header):
        parts = ([f"saknar {', '.join(missing)}"] if missing else []) + \
                ([f"okända kolumner {', '.join(unknown)}"] if unknown else [])
        problems.append(Problem(name, 1, "", f"rubrikraden ska vara {','.join(columns)}"
                                + (f" ({'; '.join(parts)})" if parts else " (en kolumn står två gånger)")))
        return []
    out: list[tuple[int, dict[str, str]]] = []
    try:
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                problems.append(Problem(name, line, "", f"{len(fields)} fält, rubrikraden har {len(header)}"))
                continue
            out.append((line, {h: f.strip() for h, f in zip(header, fields, strict=True)}))
    except csv.Error as exc:
        problems.append(Problem(name, reader.line_num, "", f"kan inte läsas som CSV ({exc})"))
    return out


def _hsa(value: str, name: str, line: int, field: str, problems: list[Problem]) -> str | None:
    if not value:
        problems.append(Problem(name, line, field, "saknas"))
        return None
    if not is_hsa_id(value):
        problems.append(Problem(name, line, field, f"{value!r} är inget HSA-id (SE + tio siffror + - + bokstäver "
                                                   f"eller siffror, högst {HSA_MAX} tecken)"))
        return None
    return value.upper()


def _unique_hsa(v: Mapping[str, str], name: str, line: int, seen: dict[str, int],
                problems: list[Problem]) -> str | None:
    hsa = _hsa(v["hsa_id"], name, line, "hsa_id", problems)
    if hsa and hsa in seen:
        problems.append(Problem(name, line, "hsa_id", f"{hsa} står redan på rad {seen[hsa]}"))
    elif hsa:
        seen[hsa] = line
    return hsa


def _check_name(v: Mapping[str, str], name: str, line: int, problems: list[Problem]) -> None:
    if not v["name"]:
        problems.append(Problem(name, line, "name", "saknas"))
    elif len(v["name"]) > NAME_MAX or not _plain(v["name"]):
        problems.append(Problem(name, line, "name", f"högst {NAME_MAX} tecken, inga styrtecken"))


def _contact(v: Mapping[str, str], name: str, line: int, problems: list[Problem]) -> str | None:
    """Checks the e-mail address; returns the phone number, if any."""
    if not EMAIL.fullmatch(v["email"]) or len(v["email"]) > EMAIL_MAX:
        problems.append(Problem(name, line, "email", f"{v['email']!r} är ingen giltig e-postadress"
                                if v["email"] else "saknas"))
    phone = v["phone"] or None
    if phone and (not PHONE.fullmatch(phone) or len(phone) > PHONE_MAX):
        problems.append(Problem(name, line, "phone", f"{phone!r} är inget telefonnummer (siffror, blanksteg, -)"))
    return phone


def _active(v: Mapping[str, str], name: str, line: int, problems: list[Problem]) -> bool:
    active_text = v["active"].lower()
    if active_text and active_text not in TRUE | FALSE:
        problems.append(Problem(name, line, "active", f"{v['active']!r}: ange true eller false"))
    return active_text not in FALSE


def _roles(v: Mapping[str, str], name: str, line: int, roles: Collection[str], active: bool,
           problems: list[Problem]) -> tuple[str, ...]:
    role_list = tuple(dict.fromkeys(r.strip() for r in v["roles"].split(";") if r.strip()))
    unknown = [r for r in role_list if r not in roles]
    if unknown:
        problems.append(Problem(name, line, "roles", f"okänd roll {', '.join(unknown)} (tillåtna: "
                                                     f"{', '.join(roles)})"))
    elif not role_list and active:
        problems.append(Problem(name, line, "roles", "en aktiv person behöver minst en roll"))
    return role_list


def _staff_row(v: Mapping[str, str], name: str, line: int, seen: dict[str, int], regions: Collection[str],
               roles: Collection[str], problems: list[Problem]) -> StaffRow | None:
    """One person's row, checked; None when it has a problem (every problem is in `problems`)."""
    before = len(problems)
    hsa = _unique_hsa(v, name, line, seen, problems)
    _check_name(v, name, line, problems)
    phone = _contact(v, name, line, problems)
    active = _active(v, name, line, problems)
    role_list = _roles(v, name, line, roles, active, problems)
    region = v["region"] or None
    if region and region not in regions:
        problems.append(Problem(name, line, "region", f"okänd region {region!r} (kända: {', '.join(regions)})"))
    unit = _hsa(v["care_unit_hsa_id"], name, line, "care_unit_hsa_id", problems) if v["care_unit_hsa_id"] else None
    if len(problems) != before or not hsa:
        return None
    return StaffRow(line, hsa, v["name"], v["email"], phone, role_list, unit, region, active)


def parse_staff(text: str, name: str, *, regions: Collection[str], roles: Collection[str],
                problems: list[Problem]) -> list[StaffRow]:
    seen: dict[str, int] = {}
    rows = (_staff_row(v, name, line, seen, regions, roles, problems)
            for line, v in _rows(text, name, STAFF_COLUMNS, problems))
    return [r for r in rows if r is not None]


def parse_units(text: str, name: str, *, regions: Collection[str], problems: list[Problem]) -> list[UnitRow]:
    out: list[UnitRow] = []
    seen: dict[str, int] = {}
    for line, v in _rows(text, name, UNIT_COLUMNS, problems):
        before = len(problems)
        hsa = _unique_hsa(v, name, line, seen, problems)
        _check_name(v, name, line, problems)
        if v["region"] not in regions:
            problems.append(Problem(name, line, "region", f"okänd region {v['region']!r} (kända: "
                                                          f"{', '.join(regions)})" if v["region"] else "saknas"))
        head = _hsa(v["head_hsa_id"], name, line, "head_hsa_id", problems)
        if len(problems) == before and hsa and head:
            out.append(UnitRow(line, hsa, v["name"], v["region"], head))
    return out


def scope(staff: list[StaffRow]) -> set[str | None]:
    """The regions a full staff file speaks for (None: people without a region, e.g. national admins).
    People of these regions who are not in the file are deactivated."""
    return {r.region for r in staff}


def _head_problem(unit: Unit, people: Mapping[str, Person]) -> str:
    """Why the unit has no working head of department in the directory as the import would leave it ("": it
    has one)."""
    head = people.get(unit.head_hsa_id or "")
    if not unit.head_hsa_id:
        return "har ingen verksamhetschef"
    if head is None:
        return f"verksamhetschefen {unit.head_hsa_id} finns inte i personalkatalogen"
    if not head.active:
        return f"verksamhetschefen {unit.head_hsa_id} är inte aktiv"
    if HEAD_ROLE not in head.roles:
        return f"verksamhetschefen {unit.head_hsa_id} saknar rollen {HEAD_ROLE}"
    return ""


def _members(staff: list[StaffRow], units: Mapping[str, Unit], staff_file: str,
             problems: list[Problem]) -> dict[str, int]:
    """Every person's unit exists and is in their region; returns the units with active people (first line)."""
    members: dict[str, int] = {}
    for r in staff:
        if r.unit_hsa_id is None:
            continue
        unit = units.get(r.unit_hsa_id)
        if unit is None:
            problems.append(Problem(staff_file, r.line, "care_unit_hsa_id",
                                    f"okänd vårdenhet {r.unit_hsa_id} (finns varken i enhetsfilen eller katalogen)"))
        elif r.region is not None and unit.region != r.region:
            problems.append(Problem(staff_file, r.line, "care_unit_hsa_id",
                                    f"vårdenheten {r.unit_hsa_id} hör till region {unit.region}, personen till {r.region}"))
        elif r.active:
            members.setdefault(r.unit_hsa_id, r.line)
    return members


def check_references(staff: list[StaffRow], units: list[UnitRow], *, staff_file: str, units_file: str,
                     existing_people: Mapping[str, Person], existing_units: Mapping[str, Unit],
                     problems: list[Problem]) -> None:
    """What can only be judged with both files and the database: every person's unit exists and is in their
    region, and every unit that is in the units file or has active people has an active head of department,
    in the directory as the import would leave it."""
    regions = scope(staff)
    after_units = {**existing_units, **{u.hsa_id: Unit(u.region, u.head_hsa_id) for u in units}}
    # People of the file's regions who are not in it are deactivated; the file's rows are as written.
    after_people = {h: Person(False, p.roles, p.region) if p.region in regions else p
                    for h, p in existing_people.items()}
    after_people.update({r.hsa_id: Person(r.active, r.roles, r.region) for r in staff})
    unit_line = {u.hsa_id: u.line for u in units}
    members = _members(staff, after_units, staff_file, problems)
    for hsa_id in sorted(set(unit_line) | set(members)):
        unit = after_units.get(hsa_id)
        why = _head_problem(unit, after_people) if unit is not None else ""
        if why:
            where = (units_file, unit_line[hsa_id], "head_hsa_id") if hsa_id in unit_line else \
                    (staff_file, members[hsa_id], "care_unit_hsa_id")
            problems.append(Problem(*where, f"vårdenheten {hsa_id} {why}"))
