"""The SLA monitor with the time under test control: one reminder per breach, not one per run.

Runs on SQLite, and on PostgreSQL when DATABASE_URL is set. The monitor's database logic is called with
adapters of the test's own: a FixedClock, and the in-process events, which record what was emitted; the
last tests run the real `sla-monitor` flow against a Prefect server and read the event and the
`open-orders` artifact back.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from models import sla
from models.clock import FixedClock
from models.status import OrderStatus
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings
from tasks.steps import monitoring
from tests.conftest import prefect_database_rows, prefect_headers
from tests.monitoring_support import (
    audit_rows,
    body,
    deviations,
    fixed_adapters,
    order,
    outbox,
    patient,
    set_status,
    stockholm,
    submit_at,
)

TUESDAY = stockholm(2021, 3, 9, 10, 0)       # office hours: due Wednesday 2021-03-10 10:00
SATURDAY = stockholm(2021, 3, 13, 11, 0)     # on call: an urgent order's callback is due 11:30
Clocked = Callable[[datetime], tuple[Adapters, FixedClock]]


@pytest.fixture
def clocked(settings: Settings, db: Database) -> Clocked:
    """`ad, clock = clocked(at)`: adapters of the test's own at a time the test moves."""
    return lambda at: fixed_adapters(settings, db, at)


def run(ad: Adapters, refs: list[str]) -> list[monitoring.OverdueFlag]:
    return monitoring.flag_overdue(ad, ad.now(), references=refs)


def emitted(ad: Adapters) -> list[dict[str, Any]]:
    return list(ad.events.sent)  # type: ignore[attr-defined]  # the in-process RecordedEvents


def test_one_reminder_per_breach_not_one_per_run(clocked: Clocked) -> None:
    ad, clock = clocked(TUESDAY)
    ref = submit_at(ad, clock.now(), body(patient()))
    assert order(ad, ref).due_at == stockholm(2021, 3, 10, 10, 0)

    clock.set(stockholm(2021, 3, 10, 9, 59))
    assert run(ad, [ref]) == []
    clock.advance(minutes=2)
    [flag] = run(ad, [ref])
    assert (flag.reference, flag.breach, flag.minutes_late, flag.mails) == (ref, 1, 1, 2)

    for minutes in (3, 60, 60 * 24, 60 * 24 * 30):  # later runs: the same breach is never flagged again
        clock.advance(minutes=minutes)
        assert run(ad, [ref]) == []

    [row] = audit_rows(ad, ref, "overdue")
    assert (row.actor, row.from_status, row.detail["breach"], row.detail["due_at"]) == \
        ("system", "submitted", 1, "2021-03-10T09:00:00+00:00")
    [dev] = deviations(ad, ref)
    assert (dev.kind, dev.minutes_late) == ("overdue", 1)
    mails = outbox(ad, ref, "overdue")
    assert sorted((m.event, m.recipient) for m in mails) == [
        ("overdue-1", "demo-kalmar-head@kalmar.invalid"), ("overdue-1", "supportcenter@kalmar.invalid")]
    assert all(ref in m.subject and "Försenad" in m.subject for m in mails)
    assert all("19" not in m.subject and f"/bestallningar/{ref}" in m.body_text for m in mails)
    [ev] = emitted(ad)
    event, resource, payload, event_id = ev["event"], ev["resource"], ev["payload"], ev["id"]
    assert event == "order.overdue"
    assert resource["prefect.resource.id"] == f"order.{ref}"
    assert payload == {"breach": 1, "due_at": "2021-03-10T09:00:00+00:00", "minutes_late": 1}
    assert str(event_id) == row.detail["event_id"]


def test_a_second_breach_of_a_new_due_time_reminds_again(clocked: Clocked) -> None:
    ad, clock = clocked(stockholm(2021, 3, 16, 9, 0))   # Tuesday: due Wednesday 09:00
    ref = submit_at(ad, clock.now(), body(patient()))
    clock.set(stockholm(2021, 3, 17, 9, 30))
    assert [f.breach for f in run(ad, [ref])] == [1]

    # The order gets a new due time (e.g. a paper order registered back); it too passes.
    with ad.db.session() as s:
        from tasks.steps.orders import get
        get(s, ref).due_at = stockholm(2021, 3, 18, 12, 0)
    clock.set(stockholm(2021, 3, 18, 11, 0))
    assert run(ad, [ref]) == []
    clock.set(stockholm(2021, 3, 18, 12, 5))
    [second] = run(ad, [ref])
    assert (second.breach, second.minutes_late) == (2, 5)
    clock.advance(hours=5)
    assert run(ad, [ref]) == []

    assert [r.detail["breach"] for r in audit_rows(ad, ref, "overdue")] == [1, 2]
    assert len(deviations(ad, ref)) == 2
    assert sorted(m.event for m in outbox(ad, ref, "overdue")) == ["overdue-1", "overdue-1", "overdue-2", "overdue-2"]
    events = emitted(ad)
    assert len(events) == 2 and events[0]["id"] != events[1]["id"]


@pytest.mark.parametrize("final", [OrderStatus.COMPLETED, OrderStatus.REJECTED, OrderStatus.CANCELLED,
                                   OrderStatus.FAILED])
def test_final_orders_are_never_flagged(clocked: Clocked, final: OrderStatus) -> None:
    ad, clock = clocked(stockholm(2021, 4, 6, 10, 0))
    ref = submit_at(ad, clock.now(), body(patient()))
    set_status(ad, ref, final, clock.now())
    for days in (1, 2, 40, 400):
        clock.set(stockholm(2021, 4, 6, 10, 0) + timedelta(days=days))
        assert run(ad, [ref]) == []
    assert audit_rows(ad, ref, "overdue") == [] and deviations(ad, ref) == [] and outbox(ad, ref, "overdue") == []
    assert emitted(ad) == []


def test_an_order_that_ends_after_its_breach_is_not_flagged_again(clocked: Clocked) -> None:
    ad, clock = clocked(stockholm(2021, 4, 13, 10, 0))
    ref = submit_at(ad, clock.now(), body(patient()))
    clock.set(stockholm(2021, 4, 14, 11, 0))
    assert len(run(ad, [ref])) == 1
    set_status(ad, ref, OrderStatus.CANCELLED, clock.now())
    with ad.db.session() as s:
        from tasks.steps.orders import get
        get(s, ref).due_at = stockholm(2021, 4, 15, 10, 0)   # even with a new due time that passes
    clock.set(stockholm(2021, 4, 20, 10, 0))
    assert run(ad, [ref]) == []
    assert len(audit_rows(ad, ref, "overdue")) == 1


def test_a_missed_callback_is_escalation_s_and_then_the_order_is_due_at_its_urgent_target(clocked: Clocked) -> None:
    from tasks.steps import orders, stages
    ad, clock = clocked(SATURDAY)
    ref = submit_at(ad, clock.now(), body(patient(), urgent=True))
    target = stockholm(2021, 3, 13, 15, 0)  # submission + the region's urgent_target_hours (issue 13)
    assert order(ad, ref).due_at == target
    assert stages.receive(ad, ref) == "awaiting_callback"
    clock.advance(minutes=31)
    # Its only missed deadline is the callback: tasks/escalation.py escalates that, the monitor stays quiet.
    assert run(ad, [ref]) == []
    assert outbox(ad, ref, "overdue") == [] and emitted(ad) == [] and deviations(ad, ref) == []

    clock.advance(minutes=14)  # called back late; it stays urgent: due at its target, not on Monday
    _, callback = orders.propose(ad, ref, "callback", "DEMO-KALMAR-ONCALL", {"note": ""})
    assert stages.record_decision(ad, ref, "callback", callback.id) == "awaiting_assessment"
    assert order(ad, ref).due_at == target
    clock.set(stockholm(2021, 3, 13, 14, 59))
    assert run(ad, [ref]) == []
    clock.advance(minutes=2)
    [flag] = run(ad, [ref])
    assert flag.urgent and flag.mails == 1 and flag.minutes_late == 1
    [m] = outbox(ad, ref, "overdue")
    assert (m.recipient, m.event) == ("supportcenter@kalmar.invalid", "overdue-1")
    assert "brådskande" in m.subject
    assert emitted(ad)[0]["resource"]["order.urgent"] == "true"
    row = audit_rows(ad, ref, "overdue")[0]
    assert row.detail["responsible"] == "support" and row.detail["deviation"] is True
    assert [d.kind for d in deviations(ad, ref)] == ["overdue"]


def test_the_breach_is_flagged_once_when_two_monitors_race(clocked: Clocked) -> None:
    ad, clock = clocked(stockholm(2021, 4, 20, 10, 0))
    refs = [submit_at(ad, clock.now(), body(patient())) for _ in range(3)]
    clock.set(stockholm(2021, 4, 22, 10, 0))
    barrier = threading.Barrier(4)
    results: list[list[monitoring.OverdueFlag]] = []
    errors: list[BaseException] = []

    def monitor() -> None:
        try:
            barrier.wait()
            results.append(run(ad, refs))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=monitor) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(f.reference for r in results for f in r) == sorted(refs)
    for ref in refs:
        assert len(audit_rows(ad, ref, "overdue")) == 1
        assert len(deviations(ad, ref)) == 1
        assert len(outbox(ad, ref, "overdue")) == 2


def test_a_capped_run_leaves_the_rest_for_the_next_run(clocked: Clocked) -> None:
    ad, clock = clocked(stockholm(2021, 5, 11, 10, 0))
    refs = [submit_at(ad, clock.advance(minutes=1), body(patient())) for _ in range(3)]
    clock.set(stockholm(2021, 5, 13, 10, 0))
    got = [[f.reference for f in monitoring.flag_overdue(ad, clock.now(), references=refs, max_flags=2)]
           for _ in range(3)]
    assert got == [refs[:2], refs[2:], []]


def test_not_due_without_due_time_or_before_it() -> None:
    at = stockholm(2021, 5, 4, 10, 0)
    assert sla.breach_to_flag(None, "submitted", at, []) is None
    assert sla.breach_to_flag(at, "submitted", at, []) is None          # due now is not late yet
    assert sla.breach_to_flag(at, "submitted", at + timedelta(seconds=1), []) == 1
    assert sla.breach_to_flag(at, "paper_fallback", at + timedelta(hours=1), []) == 1
    assert sla.breach_to_flag(at, "awaiting_approval", at + timedelta(hours=1), [sla.breach_key(at)]) is None
    assert sla.breach_to_flag(at, "failed", at + timedelta(hours=1), []) is None


def test_open_counts_table_has_no_references_or_numbers() -> None:
    at = stockholm(2021, 5, 4, 10, 0)
    counts = sla.open_counts([("kalmar", "submitted", at - timedelta(hours=1)), ("kalmar", "submitted", None),
                              ("jonkoping", "awaiting_approval", at + timedelta(hours=1)),
                              ("kalmar", "completed", at - timedelta(days=9))], at)
    assert counts == [sla.CountRow("jonkoping", "awaiting_approval", 1, 0), sla.CountRow("kalmar", "submitted", 2, 1)]
    table = sla.counts_table(counts, {"kalmar": "Region Kalmar län"}, {"submitted": "Inskickad"})
    assert table[-1] == {"Region": "Alla", "Status": "Alla", "Öppna": 3, "Varav försenade": 1}
    assert table[1]["Region"] == "Region Kalmar län" and table[1]["Status"] == "Inskickad"


@pytest.mark.e2e
def test_the_flow_emits_the_event_once_and_refreshes_the_artifact(ad: Adapters, prefect_server: str,
                                                                   smtp: Any) -> None:
    import time

    import httpx
    from prefect.artifacts import Artifact

    from flows.sla import ARTIFACT_KEY, sla_monitor
    from tests.e2e import wait_mails

    clock = FixedClock(stockholm(2019, 11, 5, 10, 0))   # earlier than any other test's order
    pnr = patient()
    ref = submit_at(ad, clock.now(), body(pnr))
    clock.set(stockholm(2019, 11, 6, 10, 30))
    first = sla_monitor(now=clock.now())
    clock.advance(minutes=5)
    second = sla_monitor(now=clock.now())
    assert first["flagged"] == 1 and first["sent"] == 2
    assert second["flagged"] == 0 and second["sent"] == 0

    got = wait_mails(smtp, ref, 2)
    assert sorted(str(m["To"]) for m in got) == ["demo-kalmar-head@kalmar.invalid", "supportcenter@kalmar.invalid"]

    def events() -> list[dict[str, Any]]:
        r = httpx.post(f"{prefect_server}/events/filter", timeout=10, headers=prefect_headers(), json={
            "filter": {"event": {"name": ["order.overdue"]}, "resource": {"id": [f"order.{ref}"]}}, "limit": 50})
        r.raise_for_status()
        return list(r.json()["events"])

    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not found:
        found = events()
        time.sleep(0.5)
    time.sleep(2)  # anything sent twice would have arrived by now
    found = events()
    assert len(found) == 1
    assert found[0]["resource"]["order.region"] == "kalmar"
    assert found[0]["payload"]["breach"] == 1
    latest: Any = Artifact.get(ARTIFACT_KEY)
    assert latest is not None and latest.type == "table"
    table = json.loads(str(latest.data))
    assert table[-1]["Region"] == "Alla" and table[-1]["Varav försenade"] >= 1
    assert ref not in str(latest.data) and ref not in str(latest.description)
    # Nothing of the patient's number reached Prefect's database (parameters, logs, events, artifacts).
    forms = {pnr, pnr.replace("-", ""), pnr[2:], pnr.replace("-", "")[2:]}
    for table_name, text in prefect_database_rows():
        assert not any(f in text for f in forms), table_name


@pytest.mark.e2e
def test_the_shipped_automations_are_idempotent_and_fire(ad: Adapters, prefect_server: str, smtp: Any) -> None:
    import time

    import httpx

    from flows.sla import sla_monitor
    from tasks.adapters.automations_monitoring import (
        AUDIT_CHAIN_BROKEN,
        MONITORING_FAILED,
        OVERDUE_ORDERS,
        TAG,
        ensure_monitoring_automations,
    )

    first = ensure_monitoring_automations(strict=True)
    second = ensure_monitoring_automations(strict=True)
    assert first == second and set(first) == {OVERDUE_ORDERS, MONITORING_FAILED, AUDIT_CHAIN_BROKEN}
    listed = httpx.post(f"{prefect_server}/automations/filter", json={}, timeout=10, headers=prefect_headers()).json()
    ours = [a for a in listed if a["name"] in first]
    assert len(ours) == 3 and all(a["enabled"] and TAG in a["tags"] for a in ours)

    clock = FixedClock(stockholm(2019, 11, 12, 10, 0))
    ref = submit_at(ad, clock.now(), body(patient()))
    time.sleep(2)  # let the server's trigger cache load the automations
    assert sla_monitor(now=clock.advance(days=2))["flagged"] >= 1

    wanted = first[OVERDUE_ORDERS]
    fired = False
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and not fired:
        r = httpx.post(f"{prefect_server}/events/filter", timeout=10, headers=prefect_headers(), json={
            "filter": {"event": {"name": ["prefect.automation.triggered"]},
                       "resource": {"id": [f"prefect.automation.{wanted}"]}}, "limit": 50})
        r.raise_for_status()
        fired = any(f"order.{ref}" in str(ev.get("related", [])) + str(ev["payload"]) for ev in r.json()["events"])
        time.sleep(1)
    assert fired
