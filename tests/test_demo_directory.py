"""The demo directory `make run` seeds is the one the HTTP contract promises (api-contract.md, "The embedded
default"): per region a care unit whose head is DEMO-R-HEAD and staff in every role, plus DEMO-ADMIN, every
address at a `.invalid` domain, and seeding twice adds nothing."""

from __future__ import annotations

import re

from sqlalchemy import select

from models.regions import load_regions
from models.tables import CareUnit, Staff
from tasks.adapters.database import Database
from tasks.adapters.demo import seed_demo

REGIONS = ("KALMAR", "OSTERGOTLAND", "JONKOPING", "STOCKHOLM")
CONTRACT_ROLES = {
    "CLINICIAN": "clinician", "CLINICIAN2": "clinician", "ASSESSOR": "assessor", "HEAD": "head_of_department",
    "BAKJOUR": "bakjour", "ONCALL": "on_call", "SUPPORT": "support", "ACCOUNTADMIN": "account_admin",
}


def test_every_contract_hsa_id_is_seeded_with_its_role_unit_and_region(db: Database) -> None:
    with db.session() as s:
        for r in REGIONS:
            unit = s.get(CareUnit, f"DEMO-{r}-UNIT")
            assert unit is not None and unit.region == r.lower() and unit.head_hsa_id == f"DEMO-{r}-HEAD"
            for code, role in CONTRACT_ROLES.items():
                person = s.get(Staff, f"DEMO-{r}-{code}")
                assert person is not None, f"DEMO-{r}-{code}"
                assert role in person.roles and person.active
                assert person.unit_hsa_id == unit.hsa_id and person.region == r.lower()
        admin = s.get(Staff, "DEMO-ADMIN")
        assert admin is not None and "admin" in admin.roles


def test_every_demo_address_is_at_an_invalid_domain_and_has_no_personal_number(db: Database) -> None:
    with db.session() as s:
        demo = s.scalars(select(Staff).where(Staff.hsa_id.like("DEMO-%"))).all()
    assert len(demo) == len(REGIONS) * len(CONTRACT_ROLES) + 1
    for person in demo:
        assert person.email.endswith(".invalid"), person.email
        assert not re.search(r"\d{6}", person.hsa_id + person.name + person.email)


def test_seeding_again_adds_nothing(db: Database) -> None:
    assert seed_demo(db, load_regions()) == 0
