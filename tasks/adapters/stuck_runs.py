"""Find order runs that nobody executes any more and end them Crashed, so the reconciler replaces them.

Two ways a run gets stuck without a word, both seen with Prefect's process worker:
- claimed, never started: the worker proposed Pending ("Submitting") and died before the flow-run process
  started. Prefect's flow-run heartbeats start with the flow, so none ever comes, and a heartbeat-based
  zombie automation never arms;
- lost mid-segment: the run is Running and the worker, or its whole machine, is gone. A warm worker
  (warm_worker.py) executes its runs in its own process, so they die with it.

What tells that somebody still executes a run is Prefect's own record of its workers: every worker sends a
heartbeat every few seconds (`PREFECT_WORKER_HEARTBEAT_SECONDS`, 10 s for the warm worker), and the worker
that claims a run writes its name on the run (label `prefect.worker.name`). `crash_stuck_runs`, called from
the housekeeping loop, ends Crashed each run of the given flows that has been Pending or Running for longer
than `threshold` seconds while the worker named on it has been silent for that long:

- Pending, worker silent or unknown (or no worker named: it died between its claim and writing its name, or
  the run was claimed by a `serve` process): never started, and never will. Crashed.
- Running, in-process worker (warm) silent: the run died with it. Crashed.
- Running, other worker type (process) silent: its flow-run process may have outlived it (a worker killed
  alone), so the run is crashed only when no flow-run heartbeat (`prefect.flow-run.heartbeat`, sent when
  PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set) came within `threshold` either.
- Running with no worker named (a `serve` process executes it): left alone. `flows/serve.py` crashes these
  when it starts again; Prefect's heartbeat automation covers the rest.

A worker that is alive answers for its own runs (it reports a run it could not start as Crashed itself).
With a 30 s threshold, a sweep every 10 s and workers heartbeating every 10 s, a dead worker's runs are
crashed 30-45 s after its last heartbeat; Crashed is final, so the reconciler starts the order's next run.
No personal data is involved: runs are named by order reference.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkerFilter,
    WorkerFilterLastHeartbeatTime,
)
from prefect.client.schemas.objects import StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import Crashed
from prefect.utilities.engine import propose_state

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun, Worker

IN_PROCESS_WORKER_TYPES = frozenset({"warm"})
# Workers silent for longer than this are not even read: gone, whatever their heartbeat interval was.
RECENT_WORKERS_SECONDS = 300.0
log = logging.getLogger("restriction_orders.stuck_runs")


@dataclass(frozen=True)
class CrashedRun:
    flow_run_id: UUID
    name: str
    was: str  # the state it was stuck in, e.g. "Pending/Submitting"
    worker: str | None
    reason: str


async def crash_stuck_runs(client: PrefectClient, flow_names: Sequence[str], threshold: float = 30.0, *,
                           now: dt.datetime | None = None, limit: int = 200) -> list[CrashedRun]:
    """End Crashed the runs of `flow_names` stuck in Pending or Running for over `threshold` seconds whose
    worker is gone (module docstring). Returns what it crashed; safe to call from several processes."""
    now = now or dt.datetime.now(dt.UTC)
    runs = await client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=list(flow_names))),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING]))),
        limit=limit)
    stale = [r for r in runs if r.state is not None and r.state.timestamp is not None
             and (now - r.state.timestamp).total_seconds() > threshold]
    if not stale:
        return []
    workers = await _workers(client, {_label(r, "prefect.work-pool.name") for r in stale},
                             since=now - dt.timedelta(seconds=max(threshold, RECENT_WORKERS_SECONDS)))
    crashed = []
    for run in stale:
        verdict = await _verdict(client, run, workers, threshold, now)
        if verdict is None:
            continue
        assert run.state is not None
        was = f"{run.state.type.value.title()}/{run.state.name}"
        if await _crash(client, run, verdict):
            crashed.append(CrashedRun(run.id, run.name, was, _label(run, "prefect.worker.name"), verdict))
            log.warning("crashed stuck run %s (%s, %s): %s", run.name, run.id, was, verdict)
    return crashed


def _label(run: FlowRun, key: str) -> str | None:
    value = (run.labels or {}).get(key)
    return str(value) if value is not None else None


async def _workers(client: PrefectClient, pools: Iterable[str | None], since: dt.datetime,
                   ) -> dict[tuple[str, str], Worker]:
    """The workers of these pools heard from since `since`. Every worker process has a name of its own, so a
    pool keeps the records of many dead ones; those are the workers not found here."""
    found: dict[tuple[str, str], Worker] = {}
    recent = WorkerFilter(last_heartbeat_time=WorkerFilterLastHeartbeatTime(after_=since))
    for pool in pools:
        if not pool:
            continue
        try:
            for w in await client.read_workers_for_work_pool(pool, worker_filter=recent, limit=200):
                found[(pool, w.name)] = w
        except ObjectNotFound:
            continue
    return found


def _silent_for(worker: Worker | None, now: dt.datetime) -> float:
    if worker is None or worker.last_heartbeat_time is None:
        return float("inf")
    return (now - worker.last_heartbeat_time).total_seconds()


async def _verdict(client: PrefectClient, run: FlowRun, workers: dict[tuple[str, str], Worker],
                   threshold: float, now: dt.datetime) -> str | None:
    """Why the run is stuck, or None when somebody may still be executing it."""
    assert run.state is not None
    name, pool = _label(run, "prefect.worker.name"), _label(run, "prefect.work-pool.name")
    worker = workers.get((pool, name)) if name and pool else None
    silent = _silent_for(worker, now)
    # A worker heartbeating more slowly than the threshold gets two of its own intervals.
    allowed = max(threshold, 2 * (worker.heartbeat_interval_seconds or 0)) if worker else threshold
    if worker is not None and silent <= allowed:
        return None
    gone = f"worker {name} silent for {silent:.0f} s" if worker else \
        f"worker {name} unknown" if name else "no worker named on it"
    if run.state.is_pending():
        return f"claimed but never started ({gone})"
    if not name:
        return None  # executed by a serve process, which this cannot see
    if _label(run, "prefect.worker.type") in IN_PROCESS_WORKER_TYPES:
        return f"lost with its worker ({gone})"
    if await _heartbeat_within(client, run.id, threshold, now):
        return None
    return f"lost: {gone}, no flow-run heartbeat for {threshold:.0f} s"


async def _heartbeat_within(client: PrefectClient, flow_run_id: UUID, seconds: float, now: dt.datetime) -> bool:
    page = await client.read_events(filter=EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
        occurred=EventOccurredFilter(since=now - dt.timedelta(seconds=seconds), until=now)), limit=1)
    return bool(page.events)


async def _crash(client: PrefectClient, run: FlowRun, reason: str) -> bool:
    """Propose Crashed (not forced): should the run have moved on meanwhile (started, finished), Prefect's
    rules decide, and a run that already ended stays as it ended."""
    try:
        state = await propose_state(client, Crashed(message=f"Stuck: {reason}."), flow_run_id=run.id)
    except (Abort, ObjectNotFound):
        return False
    return state.is_crashed()
