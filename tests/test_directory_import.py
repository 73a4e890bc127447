"""`restriction-orders directory import`: a region's HSA export checked row by row, applied all or nothing,
people left out deactivated (never deleted), every change audited. On an orders database of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from flows.bootstrap import in_process
from forms import cli
from models.directory_file import Problem
from models.tables import AuditEvent, CareUnit, Staff
from tasks.adapters import Adapters
from tasks.adapters.settings import Settings
from tasks.steps.directory_import import import_directory as _import
from tests.conftest import own_database

ORG = "SE1234567890"  # a made-up catalogue owner: these HSA-ids belong to nobody
STAFF_HEADER = "hsa_id,name,email,phone,roles,care_unit_hsa_id,region,active\n"
UNITS_HEADER = "hsa_id,name,region,head_hsa_id\n"


def hsa(local: str) -> str:
    return f"{ORG}-{local}"


UNITS = UNITS_HEADER + f"{hsa('VC1')},Vårdcentralen Norr,kalmar,{hsa('HEAD1')}\n"
STAFF = STAFF_HEADER + "".join([
    f"{hsa('HEAD1')},Hedda Chef,hedda@kalmar.example.invalid,0480-123 45,head_of_department,{hsa('VC1')},kalmar,true\n",
    f"{hsa('DOC1')},Doris Läkare,doris@kalmar.example.invalid,,clinician,{hsa('VC1')},kalmar,true\n",
    f"{hsa('ASS1')},Assar Menprövare,assar@kalmar.example.invalid,,assessor,{hsa('VC1')},kalmar,true\n",
    f"{hsa('ONC1')},Olle Beredskap,olle@kalmar.example.invalid,+46 480 11 22,on_call;support,,kalmar,1\n",
])


_AD: list[Adapters] = []  # this module's adapters, for the helpers below


@pytest.fixture(scope="module", autouse=True)
def directory_ad(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Adapters]:
    """A database of this module's own: a full Kalmar import deactivates the demo's Kalmar staff."""
    for database in own_database(tmp_path_factory, "directory", first_reference=980000):
        _AD.append(in_process(settings, db=database))
        yield _AD[0]
        _AD.clear()


def session() -> Any:
    return _AD[0].db.session()


def import_directory(*args: Any, **kwargs: Any) -> Any:
    return _import(_AD[0], *args, **kwargs)


def cli_main(argv: list[str]) -> int:
    return cli.main(argv, ad=_AD[0])


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def person(hsa_id: str) -> Staff | None:
    with session() as s:
        return s.get(Staff, hsa_id)


def counts() -> tuple[int, int, int]:
    with session() as s:
        return (int(s.scalar(select(func.count()).select_from(Staff)) or 0),
                int(s.scalar(select(func.count()).select_from(CareUnit)) or 0),
                int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0))


def directory_events(action_prefix: str = "directory_") -> list[AuditEvent]:
    with session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action.startswith(action_prefix))
                              .order_by(AuditEvent.id)))


def test_a_file_with_problems_reports_every_one_with_its_line_and_writes_nothing(tmp_path: Path) -> None:
    staff = STAFF_HEADER + "".join([
        f"{hsa('A1')},Anna,anna@x.invalid,,clinician,{hsa('VC1')},kalmar,true\n",            # 2: fine
        f"{hsa('A2')},Bertil,bertil-at-x,,clinician,{hsa('VC1')},kalmar,true\n",            # 3: email
        f"SE123-A3,Cecilia,c@x.invalid,,clinician,{hsa('VC1')},kalmar,true\n",               # 4: HSA-id
        f"{hsa('A4')},David,d@x.invalid,,surgeon;clinician,{hsa('VC1')},kalmar,true\n",     # 5: role
        f"{hsa('A5')},Eva,e@x.invalid,,clinician,{hsa('VC1')},narnia,true\n",               # 6: region
        f"{hsa('A6')},Filip,f@x.invalid,,clinician,{hsa('NOPE')},kalmar,true\n",            # 7: unit
        f"{hsa('A1')},Anna igen,a2@x.invalid,,clinician,{hsa('VC1')},kalmar,true\n",        # 8: duplicate
        f"{hsa('A7')},Gustav,g@x.invalid,ring mig,clinician,{hsa('VC1')},kalmar,kanske\n",  # 9: phone, active
        "\n",
        f"{hsa('A8')},Helga,h@x.invalid,,clinician\n",                                       # 11: width
    ])
    units = UNITS_HEADER + "".join([
        f"{hsa('VC1')},Vårdcentralen Norr,kalmar,{hsa('A1')}\n",     # 2: head without the role
        f"{hsa('VC2')},Vårdcentralen Syd,kalmar,\n",                  # 3: no head
        f"{hsa('VC3')},Vårdcentralen Väst,kalmar,{hsa('GONE')}\n",    # 4: head nowhere
    ])
    before = counts()
    result = import_directory(write(tmp_path, "staff.csv", staff), write(tmp_path, "units.csv", units))
    assert not result.applied and counts() == before
    got = {(p.file, p.line, p.field) for p in result.problems}
    assert got == {
        ("staff.csv", 3, "email"), ("staff.csv", 4, "hsa_id"), ("staff.csv", 5, "roles"),
        ("staff.csv", 6, "region"), ("staff.csv", 7, "care_unit_hsa_id"), ("staff.csv", 8, "hsa_id"),
        ("staff.csv", 9, "phone"), ("staff.csv", 9, "active"), ("staff.csv", 11, ""),
        ("units.csv", 2, "head_hsa_id"), ("units.csv", 3, "head_hsa_id"), ("units.csv", 4, "head_hsa_id"),
    }, [str(p) for p in result.problems]
    text = "\n".join(str(p) for p in result.problems)
    for words in ("staff.csv:5: roles: okänd roll surgeon", "staff.csv:6: region: okänd region 'narnia'",
                  "staff.csv:8: hsa_id: SE1234567890-A1 står redan på rad 2",
                  "staff.csv:7: care_unit_hsa_id: okänd vårdenhet SE1234567890-NOPE",
                  f"units.csv:2: head_hsa_id: vårdenheten {hsa('VC1')} verksamhetschefen {hsa('A1')} saknar rollen",
                  "units.csv:3: head_hsa_id: saknas",
                  f"units.csv:4: head_hsa_id: vårdenheten {hsa('VC3')} verksamhetschefen {hsa('GONE')} finns inte"):
        assert words in text, text


@pytest.mark.parametrize(("header", "problem"), [
    ("hsa_id,name,email,roles,care_unit_hsa_id,region,active\n", "saknar phone"),
    (STAFF_HEADER.replace("active", "aktiv"), "okända kolumner aktiv"),
    ("", "filen är tom"),
])
def test_a_wrong_header_is_one_clear_problem(tmp_path: Path, header: str, problem: str) -> None:
    result = import_directory(write(tmp_path, "staff.csv", header))
    assert [str(p) for p in result.problems if problem in str(p)], result.problems


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    result = import_directory(write(tmp_path, "staff.csv", STAFF, encoding="latin-1"))
    assert [str(p) for p in result.problems] and "UTF-8" in str(result.problems[0])


def test_dry_run_shows_the_changes_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = counts()
    code = cli_main(["directory", "import", "--staff", str(write(tmp_path, "staff.csv", STAFF)),
                     "--units", str(write(tmp_path, "units.csv", UNITS)), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and counts() == before
    assert f"+ ny vårdenhet {hsa('VC1')}: name=Vårdcentralen Norr, region=kalmar, head_hsa_id={hsa('HEAD1')}" in out
    assert f"+ ny person {hsa('ONC1')}: name=Olle Beredskap" in out and "roles=on_call;support" in out
    # Every demo person of Kalmar is missing from this full Kalmar import: each would be deactivated.
    assert "- avaktiveras DEMO-KALMAR-CLINICIAN (finns inte i filen; tas inte bort)" in out
    assert "DEMO-STOCKHOLM" not in out and "DEMO-ADMIN" not in out  # other regions, no region: untouched
    assert "Provkörning, inget skrevs (nya: 5, ändrade: 0, avaktiverade: 8, oförändrade: 0)." in out


def test_import_then_the_same_file_again_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    staff, units = write(tmp_path, "staff.csv", STAFF), write(tmp_path, "units.csv", UNITS)
    assert cli_main(["directory", "import", "--staff", str(staff), "--units", str(units), "--by", "demo-admin"]) == 0
    assert "Inläst (nya: 5, ändrade: 0, avaktiverade: 8, oförändrade: 0)" in capsys.readouterr().out
    onc = person(hsa("ONC1"))
    assert onc is not None and (onc.roles, onc.phone, onc.unit_hsa_id, onc.region, onc.active) == (
        ["on_call", "support"], "+46 480 11 22", None, "kalmar", True)
    demo = person("DEMO-KALMAR-CLINICIAN")
    assert demo is not None and not demo.active  # deactivated, still there
    other = person("DEMO-STOCKHOLM-CLINICIAN")
    assert other is not None and other.active
    events = directory_events()
    assert {e.action for e in events} == {"directory_unit_add", "directory_staff_add", "directory_staff_deactivate",
                                          "directory_imported"}
    assert all(e.actor == "DEMO-ADMIN" and e.channel == "cli" and e.patient_pnr is None for e in events)
    add = next(e for e in events if e.detail["hsa_id"] == hsa("DOC1"))
    assert add.detail["changed"]["email"] == [None, "doris@kalmar.example.invalid"]
    assert add.detail["staff_file"] == "staff.csv" and len(add.detail["staff_sha256"]) == 16

    n = len(events)
    assert cli_main(["directory", "import", "--staff", str(staff), "--units", str(units)]) == 0
    assert "Inget att ändra (nya: 0, ändrade: 0, avaktiverade: 0, oförändrade: 5)." in capsys.readouterr().out
    assert len(directory_events()) == n


def test_changes_and_leavers_are_audited_and_a_leaver_comes_back(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    units = write(tmp_path, "units.csv", UNITS)
    cli_main(["directory", "import", "--staff", str(write(tmp_path, "s0.csv", STAFF)), "--units", str(units)])
    changed = STAFF.replace("doris@kalmar.example.invalid,,clinician", "doris.l@kalmar.example.invalid,,clinician;assessor")
    without_assar = "".join(line for line in changed.splitlines(keepends=True) if "ASS1" not in line)
    mark = len(directory_events())
    assert cli_main(["directory", "import", "--staff", str(write(tmp_path, "s1.csv", without_assar))]) == 0
    out = capsys.readouterr().out
    assert (f"~ ändras person {hsa('DOC1')}: email doris@kalmar.example.invalid -> doris.l@kalmar.example.invalid, "
            "roles clinician -> clinician;assessor") in out
    assert f"- avaktiveras {hsa('ASS1')}" in out
    assert (person(hsa("ASS1")) or Staff()).active is False
    new = directory_events()[mark:]
    assert [(e.action, e.detail["hsa_id"]) for e in new[:-1]] == [("directory_staff_update", hsa("DOC1")),
                                                                  ("directory_staff_deactivate", hsa("ASS1"))]
    assert new[-1].action == "directory_imported" and new[-1].detail["changes"] == 2
    # Back in the next export: active again, the same row.
    assert cli_main(["directory", "import", "--staff", str(write(tmp_path, "s2.csv", changed))]) == 0
    assert f"~ ändras person {hsa('ASS1')}: active false -> true" in capsys.readouterr().out
    assert (person(hsa("ASS1")) or Staff()).active is True


def test_leaving_out_a_units_head_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_main(["directory", "import", "--staff", str(write(tmp_path, "s0.csv", STAFF)),
              "--units", str(write(tmp_path, "u.csv", UNITS))])
    capsys.readouterr()
    without_head = "".join(line for line in STAFF.splitlines(keepends=True) if "HEAD1" not in line)
    before = counts()
    assert cli_main(["directory", "import", "--staff", str(write(tmp_path, "s1.csv", without_head))]) == 1
    err = capsys.readouterr().err
    assert "Inget har skrivits: 1 fel." in err
    assert (f"s1.csv:2: care_unit_hsa_id: vårdenheten {hsa('VC1')} verksamhetschefen {hsa('HEAD1')} "
            "är inte aktiv") in err
    assert counts() == before and (person(hsa("HEAD1")) or Staff()).active


def test_a_person_in_another_regions_unit_is_refused(tmp_path: Path) -> None:
    with session() as s:
        if s.get(CareUnit, hsa("STHLM1")) is None:
            s.add(CareUnit(hsa_id=hsa("STHLM1"), name="Stockholmsenheten", region="stockholm",
                           head_hsa_id="DEMO-STOCKHOLM-HEAD"))
    staff = STAFF + f"{hsa('X1')},Xena,x@x.invalid,,clinician,{hsa('STHLM1')},kalmar,true\n"
    result = import_directory(write(tmp_path, "staff.csv", staff), write(tmp_path, "units.csv", UNITS))
    assert [(p.line, p.field) for p in result.problems] == [(6, "care_unit_hsa_id")]
    assert "hör till region stockholm, personen till kalmar" in str(result.problems[0])


def test_spreadsheet_exports_bom_crlf_and_quoted_commas(tmp_path: Path) -> None:
    staff = ("\ufeff" + STAFF.replace("Doris Läkare", '"Läkare, Doris"')).replace("\n", "\r\n")
    result = import_directory(write(tmp_path, "staff.csv", staff), write(tmp_path, "units.csv", UNITS),
                              dry_run=True)
    assert result.problems == [] and not result.applied
    assert (person(hsa("DOC1")) or Staff()).name in ("Doris Läkare", "Läkare, Doris")


def test_problem_text_names_file_line_and_field() -> None:
    assert str(Problem("staff.csv", 12, "email", "saknas")) == "staff.csv:12: email: saknas"
    assert str(Problem("staff.csv", 0, "", "är inte UTF-8")) == "staff.csv: är inte UTF-8"
