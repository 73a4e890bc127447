"""The production layout's faults (issue 15): two real warm workers (`python -m tasks.adapters.warm_worker`)
on a pool of the warm type (the embedded deployments' pool, its deployments as the process left them),
Prefect and the orders database on PostgreSQL, housekeeping beside them.

- a worker dies (SIGKILL to its process group) right after it claimed an order's run, before starting it:
  the run stays Pending with the dead worker's name on it ("claimed but never started");
- a worker dies mid-segment, its order's run Running;

each time housekeeping's sweep (tasks/adapters/stuck_runs.py) crashes the run once its worker has been silent
for the threshold, the reconciler starts the order's next run, the surviving worker executes it, and every
order completes exactly once (each effect, each status transition once), the replacement within 60 s of the
kill. Heartbeats every 2 s and a 3 s threshold keep it short. Skipped unless DATABASE_URL is PostgreSQL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from flows.serve import EMBEDDED_POOL as POOL
from models.tables import AppliedEffect, AuditEvent
from tasks.adapters import Adapters
from tests.conftest import PREFECT_DB, ROOT, FlowServer
from tests.e2e import aged, body, decide, status, submit

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="the production layout: the orders database on PostgreSQL (DATABASE_URL)")]
DECIDE: dict[str, tuple[str, str, dict[str, Any]]] = {"awaiting_assessment": ("harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"}),
          "awaiting_approval": ("approval", "DEMO-KALMAR-HEAD", {"approved": True})}


class Workers:
    """Warm worker processes as a supervisor runs them: one that dies is replaced by a new one (a new name)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.logs / f"worker-{len(self.procs)}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "tasks.adapters.warm_worker", "--pool", POOL,
                                     "--code-dir", str(ROOT), "--heartbeat-seconds", "2", "--limit", "8"],
                                    cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def replace_dead(self) -> list[float]:
        """Start a worker for each that died since the last look; returns when they were found dead."""
        dead = [p for p in self.procs if p.poll() is not None and p.returncode is not None
                and not getattr(p, "replaced", False)]
        for p in dead:
            p.replaced = True  # type: ignore[attr-defined]
            self.start()
        return [time.monotonic() for _ in dead]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture
def production(prefect_ad: Adapters, flow_server: FlowServer, tmp_path: Path) -> Iterator[tuple[Adapters, Workers]]:
    """The embedded process stopped (its deployments stay in the pool), housekeeping in a thread with a 3 s
    stuck-run threshold; the test starts two warm workers armed with the failpoints."""
    if "url" not in PREFECT_DB:
        pytest.skip("the production layout: Prefect on PostgreSQL")
    from flows.serve import housekeeping_loop
    flow_server.kill()
    env = {**flow_server.env, "RO_FAILPOINTS": "after-claim,after-receive,after-decision",
           "RO_FAILPOINT_DIR": str(tmp_path)}
    workers = Workers(env, tmp_path)
    ad = dataclasses.replace(prefect_ad, settings=prefect_ad.settings.model_copy(update={"stuck_run_seconds": 3.0}))
    stop = threading.Event()
    hk = threading.Thread(target=housekeeping_loop, args=(ad, 1.0, stop), daemon=True, name="test-housekeeping")
    hk.start()
    try:
        yield ad, workers
    finally:
        stop.set()
        hk.join(15)
        workers.stop()
        flow_server.start()


def _audit(ad: Adapters, reference: str) -> list[AuditEvent]:
    with ad.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == reference)
                              .order_by(AuditEvent.id)))


def _drive(ad: Adapters, workers: Workers, ref: str, timeout: float = 120) -> list[float]:
    """Decide each human step as it comes, replace dead workers, until the order completes."""
    killed: list[float] = []
    decided: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        killed += workers.replace_dead()
        st = status(ad, ref)
        if st == "completed":
            return killed
        if st in DECIDE and st not in decided:
            decided.add(st)
            stage, actor, decision = DECIDE[st]
            decide(ad, ref, stage, actor, decision)
        time.sleep(0.3)
    raise AssertionError(f"{ref} is {status(ad, ref)} after {timeout} s")


@pytest.mark.timeout(900)
def test_lost_workers_claimed_and_mid_segment_every_order_completes_once(
        production: tuple[Adapters, Workers], tmp_path: Path) -> None:
    ad, workers = production
    # The claim window first, while nobody serves the pool: the order is armed before any worker can claim it.
    claimed = submit(ad, body("seal_or_lock", patient_personal_number=aged(41, 701)))
    (tmp_path / f"{claimed}.armed").write_text("after-claim")
    workers.start()
    workers.start()
    killed = _drive(ad, workers, claimed)
    # Then mid-segment: the worker that executes the harm assessment's decision dies with the run Running.
    mid = submit(ad, body("seal_or_lock", patient_personal_number=aged(42, 702)))
    (tmp_path / f"{mid}.armed").write_text("after-decision:harm_assessment")
    killed += _drive(ad, workers, mid)
    fired = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("after-"))
    assert fired == [f"after-claim-{claimed}", f"after-decision:harm_assessment-{mid}"], fired
    assert len(killed) == 2, "each failpoint took its worker down"
    assert {ref: status(ad, ref) for ref in (claimed, mid)} == {claimed: "completed", mid: "completed"}
    with ad.db.session() as s:
        effects = {ref: sorted(e.effect for e in s.scalars(select(AppliedEffect)
                                                            .where(AppliedEffect.order_reference == ref)))
                   for ref in (claimed, mid)}
    assert effects == {claimed: ["lock_login", "seal_journal"], mid: ["lock_login", "seal_journal"]}
    for ref in (claimed, mid):
        events = _audit(ad, ref)
        transitions = Counter((e.from_status, e.to_status) for e in events if e.to_status)
        assert all(n == 1 for n in transitions.values()), (ref, transitions)
        stuck = [e for e in events if e.action == "run_stuck_crashed"]
        assert len(stuck) == 1, (ref, [e.action for e in events])
        started = [e for e in events if e.action == "run_started"]
        assert len(started) == 2, (ref, [e.detail for e in started])
        # Kill (the marker file's time) to the replacement run recorded: within 60 s.
        marker = next(tmp_path.glob(f"after-*-{ref}"))
        replaced_after = started[1].at.timestamp() - marker.stat().st_mtime
        assert 0 < replaced_after < 60, (ref, replaced_after)
        print(f"{ref}: {stuck[0].detail['reason']}; replaced {replaced_after:.1f} s after the kill")
    reasons = {ref: next(e for e in _audit(ad, ref) if e.action == "run_stuck_crashed").detail["reason"]
               for ref in (claimed, mid)}
    assert "claimed but never started" in reasons[claimed], reasons
    assert "lost with its worker" in reasons[mid], reasons


