"""Demo directory for the embedded default: per region one care unit and staff in every role.

HSA-ids follow the contract (`DEMO-<REGION>-<ROLE>`); email addresses are at `.invalid` domains.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from models.regions import RegionSettings
from models.tables import CareUnit, Staff
from tasks.adapters.database import Database

ROLE_STAFF: list[tuple[str, str, list[str]]] = [
    ("CLINICIAN", "Klinikern", ["clinician"]),
    ("CLINICIAN2", "Kliniker två", ["clinician"]),
    ("ASSESSOR", "Menprövaren", ["assessor"]),
    ("HEAD", "Verksamhetschefen", ["head_of_department"]),
    ("BAKJOUR", "Bakjouren", ["bakjour"]),
    ("ONCALL", "Beredskapen", ["on_call"]),
    ("SUPPORT", "Supporten", ["support"]),
    ("ACCOUNTADMIN", "Kontoadministratören", ["account_admin"]),
]


def seed_directory(s: Session, regions: Mapping[str, RegionSettings]) -> int:
    """Insert the demo directory where it is missing; returns how many rows were added."""
    added = 0
    for code, region in regions.items():
        r = code.upper()
        unit_id = f"DEMO-{r}-UNIT"
        if s.get(CareUnit, unit_id) is None:
            s.add(CareUnit(hsa_id=unit_id, name=f"Demoenheten {region.name}", region=code,
                           head_hsa_id=f"DEMO-{r}-HEAD"))
            added += 1
        for role_code, title, roles in ROLE_STAFF:
            hsa = f"DEMO-{r}-{role_code}"
            if s.get(Staff, hsa) is None:
                s.add(Staff(hsa_id=hsa, name=f"{title} ({region.name})", email=f"{hsa.lower()}@{code}.invalid",
                            roles=roles, unit_hsa_id=unit_id, region=code, active=True))
                added += 1
    if s.get(Staff, "DEMO-ADMIN") is None:
        s.add(Staff(hsa_id="DEMO-ADMIN", name="Administratören", email="demo-admin@restriction-orders.invalid",
                    roles=["admin"], unit_hsa_id=None, region=None, active=True))
        added += 1
    return added


def seed_demo(db: Database, regions: Mapping[str, RegionSettings]) -> int:
    with db.session() as s:
        return seed_directory(s, regions)
