"""Hostile input against the JSON API (probe)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flows import urgent
from tasks import launch
from tests.conftest import own_database
from tests.webapp import body

CLINICIAN = "DEMO-KALMAR-CLINICIAN"


@pytest.fixture(scope="module", autouse=True)
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield from own_database(tmp_path_factory, "hostile", first_reference=800000)


@pytest.fixture(scope="module")
def client(db: None) -> Iterator[TestClient]:
    from forms.app import create_app

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(launch, "start_run", nothing)
        mp.setattr(launch, "resume", nothing)
        mp.setattr(launch, "cancel_run", nothing)
        mp.setattr(urgent, "ensure_run", nothing)
        with TestClient(create_app(), client=("127.0.0.1", 40000), raise_server_exceptions=False) as c:
            c.headers["X-Remote-User"] = CLINICIAN
            yield c


PROBES: list[tuple[str, bytes]] = [
    ("deep", b"[" * 5000 + b"]" * 5000),
    ("deepobj", b'{"a":' * 3000 + b"1" + b"}" * 3000),
    ("surrogate-reason", json.dumps(body(reason="\ud800x")).encode()),
    ("nul-reason", json.dumps(body(reason="a\x00b")).encode()),
    ("bigint", b"1" * 5000),
    ("nan", json.dumps(body(reason=float("nan"))).encode()),
    ("surrogate-key", json.dumps({"\udc80": 1}).encode()),
    ("pnr-fullwidth", json.dumps(body(patient_personal_number="１９１２１２１２-１２１２")).encode()),
    ("pnr-nul", json.dumps(body(patient_personal_number="19121212-1212\x00")).encode()),
    ("unit-nul", json.dumps(body(care_unit_hsa_id="DEMO-KALMAR-UNIT\x00")).encode()),
    ("unit-surr", json.dumps(body(care_unit_hsa_id="\ud800")).encode()),
    ("region-list", json.dumps(body(region=["kalmar"])).encode()),
    ("region-dict", json.dumps(body(region={"a": 1})).encode()),
    ("type-dict", json.dumps(body(order_type={"a": 1})).encode()),
    ("actions-dict", json.dumps(body(actions=[{"a": 1}])).encode()),
    ("minor", json.dumps(body("minor_access", minor_access={"grant": True, "recipient": ["guardian"]})).encode()),
    ("minor2", json.dumps(body("minor_access", minor_access={"grant": True, "recipient": {"x": 1}})).encode()),
]


@pytest.mark.parametrize(("name", "raw"), PROBES, ids=[p[0] for p in PROBES])
@pytest.mark.parametrize("path", ["/api/orders", "/api/orders/validate"])
def test_probe(client: TestClient, name: str, raw: bytes, path: str) -> None:
    r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    print(name, path, r.status_code, r.text[:300])
    assert r.status_code < 500
