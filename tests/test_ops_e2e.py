"""Operations against the session's real Prefect server: the automations CLI, the per-order artifact,
`prefect deploy --all` from prefect.yaml."""

from __future__ import annotations

import json

import httpx
import pytest

from forms import cli
from tasks.automations import MISSED_CALLBACK, RUN_FAILED, ZOMBIE
from tasks.automations_monitoring import MONITORING_FAILED, OVERDUE_ORDERS

pytestmark = pytest.mark.e2e
SHIPPED = {MISSED_CALLBACK, RUN_FAILED, ZOMBIE, OVERDUE_ORDERS, MONITORING_FAILED}


def _listed(api: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in httpx.post(f"{api}/automations/filter", json={}, timeout=10).json():
        out.setdefault(a["name"], []).append(a["id"])
    return out


def test_cli_creates_every_shipped_automation_once(prefect_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["automations"]) == 0
    first = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(first) == SHIPPED
    assert cli.main(["automations"]) == 0  # idempotent: the same ones, no duplicates
    assert dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines()) == first
    listed = _listed(prefect_server)
    assert {name: listed[name] for name in SHIPPED} == {name: [first[name]] for name in SHIPPED}
    assert cli.main(["automations", "--print"]) == 0
    printed = json.loads(capsys.readouterr().out)["automations"]
    assert {a["name"] for a in printed} == SHIPPED
