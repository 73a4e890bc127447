"""A Prefect worker that executes its flow runs inside its own long-lived process.

Prefect's process worker starts a new Python for every flow run, and a suspended order resumes as a new
flow-run segment: each decision paid a process start (importing Prefect and the flow: about 1.4 s of CPU)
plus the wait for the next poll (10 s by default). This worker keeps Prefect's model and only changes where
a claimed run executes:

- It is a `BaseWorker` (Prefect's extension point for new worker types): it polls its work pool, and claims
  a run by proposing Pending, so any number of these workers, on any number of machines, against one Prefect
  server never run the same run twice (the server refuses a second Pending). States, logs, task runs and
  suspensions are the engine's own, so the UI shows them as with the process worker.
- A claimed run executes in this process, on a thread of its own with its own event loop (an order flow is
  async, and its sync tasks would block a shared loop), at most `limit` at once. Flows are imported once per
  deployment entrypoint and kept, so a resumed segment starts in milliseconds.
- It listens to Prefect's event stream for runs of its pool that become Scheduled (new, resumed, retried)
  and claims them at once; the ordinary poll stays as the fallback while the stream is down.
- A run that raises ends Failed (the engine's doing); one whose execution breaks outside the engine ends
  Crashed (`BaseWorker` proposes Crashed when `run` reports a non-zero status). A run whose worker dies
  with it is found by `tasks.adapters.stuck_runs.crash_stuck_runs` from the worker's missing heartbeats,
  and by the next worker of the same name when it starts.

Start it with `python -m tasks.adapters.warm_worker --pool restriction-orders` (see `main`). The code of the
deployments must be installed where the worker runs: entrypoints are imported from `code_dir` (the working
directory by default), and a deployment's pull steps are not run (they would change this whole process).
Job variables that configure a process (env, working_dir, command) do not apply either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter
from prefect.states import Cancelled
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from pydantic import PrivateAttr

from tasks.adapters import failpoints, quiet_suspensions
from tasks.adapters.in_process_runs import (
    FlowCache,
    InProcessRun,
    cancellation_per_thread,
    execute,
    mark_suspended,
    share_suspension_observer,
    shares_suspension_observer,
)

if TYPE_CHECKING:
    from prefect.client.schemas.objects import Flow as APIFlow
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.events.schemas.events import Event

WORKER_TYPE = "warm"
# State-change events that make a run claimable: created, resumed from a suspension, retried, rescheduled.
WAKE_EVENTS = ("prefect.flow-run.Scheduled", "prefect.flow-run.Resuming", "prefect.flow-run.AwaitingRetry",
               "prefect.flow-run.Late")
CANCELLING_EVENT = "prefect.flow-run.Cancelling"
SUSPENDED_EVENT = "prefect.flow-run.Suspended"
log = logging.getLogger("restriction_orders.warm_worker")


class WarmJobConfiguration(BaseJobConfiguration):
    """The pool's job template has nothing to configure for an in-process run; what this worker needs from
    the claim is the deployment's entrypoint, which `BaseWorker` has already read when it prepares the job."""

    _entrypoint: str | None = PrivateAttr(default=None)

    def prepare_for_flow_run(self, flow_run: FlowRun, deployment: DeploymentResponse | None = None,
                             flow: APIFlow | None = None, work_pool: WorkPool | None = None,
                             worker_name: str | None = None, worker_id: UUID | None = None) -> None:
        super().prepare_for_flow_run(flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id)
        self._entrypoint = deployment.entrypoint if deployment is not None else None


class WarmVariables(BaseVariables):
    pass


class WarmWorkerResult(BaseWorkerResult):
    pass


class WarmWorker(BaseWorker[WarmJobConfiguration, WarmVariables, WarmWorkerResult]):
    type = WORKER_TYPE
    job_configuration = WarmJobConfiguration
    job_configuration_variables = WarmVariables
    _description = "Executes flow runs in the worker's own long-lived process, one thread per running flow run."
    _display_name = "Warm (in-process)"

    def __init__(self, work_pool_name: str, *, code_dir: Path | str | None = None, wake_on_events: bool = True,
                 preload: bool = True, limit: int = 16, heartbeat_interval_seconds: int = 10,
                 prefetch_seconds: float = 0, share_suspension_observer: bool = True,
                 fallback_poll_seconds: float = 2.0, **kwargs: Any) -> None:
        """`limit` bounds the flow runs executing at once (threads); `heartbeat_interval_seconds` is how often
        the worker tells Prefect it is alive, which is what finds the runs of a dead worker (stuck_runs.py).
        No prefetch by default: a run claimed before its time would hold a thread while the engine waits.
        `share_suspension_observer` (with `wake_on_events`): see `_share_suspension_observer`. While the events
        stream is down the worker polls every `fallback_poll_seconds` instead of waking on events."""
        super().__init__(work_pool_name, limit=limit, heartbeat_interval_seconds=heartbeat_interval_seconds,
                         prefetch_seconds=prefetch_seconds, **kwargs)
        self.flows = FlowCache(Path(code_dir) if code_dir else Path.cwd())
        self.wake_on_events = wake_on_events
        self.share_suspension_observer = share_suspension_observer
        self.fallback_poll_seconds = fallback_poll_seconds
        self.preload = preload
        self.events_connected = False
        self.identifier = f"{socket.gethostname()}:{os.getpid()}"
        self._executor: ThreadPoolExecutor | None = None
        self._executing: dict[UUID, InProcessRun] = {}
        self._claim_lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._limit_reached = False
        self._in_run: set[UUID] = set()
        self._deferred: set[UUID] = set()
        self._labelled: dict[UUID, dict[str, Any]] = {}  # labels a claimed run had when it was claimed
        self._hints: dict[UUID, int] = {}  # runs an event said are claimable -> claim rounds that missed them
        self._services: anyio.abc.TaskGroup | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def setup(self) -> None:
        if self.wake_on_events and self.share_suspension_observer:
            share_suspension_observer()
        cancellation_per_thread()
        quiet_suspensions.install()  # this process executes flow runs: their suspensions log at INFO
        await super().setup()
        self._executor = ThreadPoolExecutor(max_workers=self._limit or 16, thread_name_prefix="flow-run")
        self._claim_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._services = anyio.create_task_group()
        await self._services.__aenter__()
        self._services.start_soon(self._claim_when_woken)
        self._services.start_soon(self._start_up_chores)
        if self.wake_on_events:
            self._services.start_soon(self._listen_for_events)

    async def teardown(self, *exc_info: Any) -> None:
        if self._services is not None:
            self._services.cancel_scope.cancel()
            with contextlib.suppress(BaseException):
                await self._services.__aexit__(None, None, None)
            self._services = None
        await super().teardown(*exc_info)
        executor, self._executor = self._executor, None
        if executor is not None:
            # Segments in flight finish (they are short); nothing new starts.
            await anyio.to_thread.run_sync(lambda: executor.shutdown(wait=True, cancel_futures=True))

    async def _start_up_chores(self) -> None:
        while not self._has_successfully_synced:
            await anyio.sleep(0.2)
        await self._crash_own_orphans()
        if self.preload:
            await self._preload_flows()

    async def _preload_flows(self) -> None:
        """Import the flows of the pool's deployments now, so that the first segment is as fast as the rest."""
        try:
            deployments = await self.client.read_deployments(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])))
        except Exception as exc:
            log.warning("could not list the pool's deployments to preload them: %s", type(exc).__name__)
            return
        for entrypoint in sorted({d.entrypoint for d in deployments if d.entrypoint}):
            try:
                await anyio.to_thread.run_sync(self.flows.load, entrypoint)
            except Exception as exc:  # the run will report it, on the run, when it comes
                log.warning("could not preload %s: %s", entrypoint, exc)

    async def _crash_own_orphans(self) -> None:
        """A worker restarted under the same name heartbeats for its dead predecessor too, so the runs that
        predecessor had claimed would look alive to `crash_stuck_runs` for ever. This worker just started and
        executes nothing yet: any run still Pending or Running under its name belongs to nobody."""
        try:
            runs = await self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING]))),
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])), limit=200)
        except Exception as exc:
            log.warning("could not look for runs left by an earlier worker of this name: %s", type(exc).__name__)
            return
        for run in runs:
            if (run.labels or {}).get("prefect.worker.name") != self.name:
                continue
            if run.id in self._executing or run.id in self._submitting_flow_run_ids:
                continue
            await self._propose_crashed_state(run, "Its worker stopped while executing it.")

    # -- claiming ----------------------------------------------------------------------------------------

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        # One claim at a time, whether the poll or an event asked for it.
        assert self._claim_lock is not None
        async with self._claim_lock:
            t0 = time.monotonic()
            runs = await super().get_and_submit_flow_runs()
            log.debug("claim round: %d run(s) in %.0f ms", len(runs), (time.monotonic() - t0) * 1000)
            self._limit_reached = self._limiter is not None and self._limiter.available_tokens == 0
            self._chase_hints({r.id for r in runs})
            return runs

    def _chase_hints(self, claimed: set[UUID]) -> None:
        """Prefect publishes a state change's event before it commits the change, so a claim woken by the
        event can miss the run by milliseconds (more under load). Look again, a little later each time."""
        for run_id, misses in list(self._hints.items()):
            if run_id in claimed or run_id in self._deferred or run_id in self._in_run or misses >= 5:
                del self._hints[run_id]
                continue
            self._hints[run_id] = misses + 1
            if self._services is not None:
                self._services.start_soon(self._recheck_hint, run_id, 0.05 * 2 ** misses)

    async def _recheck_hint(self, run_id: UUID, delay: float) -> None:
        await anyio.sleep(delay)
        if run_id not in self._hints:
            return
        try:
            run = await self.client.read_flow_run(run_id)
        except Exception:
            self._hints.pop(run_id, None)
            return
        if run.state is not None and (run.state.is_pending() or run.state.is_running() or run.state.is_final()):
            self._hints.pop(run_id, None)  # another worker has it, or it is over
        else:
            self.wake()

    def wake(self) -> None:
        """Claim now rather than at the next poll."""
        if self._wake is not None:
            self._wake.set()

    async def _claim_when_woken(self) -> None:
        """Claims when woken; while the events stream is down, also every `fallback_poll_seconds` (the base
        worker's own poll, every PREFECT_WORKER_QUERY_SECONDS, goes on beside this either way)."""
        assert self._wake is not None
        while True:
            fallback = self.wake_on_events and not self.events_connected
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.fallback_poll_seconds if fallback else None)
            self._wake.clear()
            if not self._has_successfully_synced:
                continue
            try:
                await self.get_and_submit_flow_runs()
            except Exception as exc:  # the poll loop goes on regardless
                log.warning("claim after an event failed: %s", type(exc).__name__)

    async def _submit_scheduled_flow_runs(self, flow_run_response: list[Any]) -> list[FlowRun]:
        # A run resumed while its previous segment is still winding down here (the engine returns some
        # milliseconds after the run is Suspended) still holds its slot: the base worker would skip it
        # until the next poll. Claim it the moment that segment's slot is released instead.
        ready = []
        for entry in flow_run_response:
            if entry.flow_run.id in self._in_run:
                self._deferred.add(entry.flow_run.id)
            else:
                ready.append(entry)
                self._labelled[entry.flow_run.id] = entry.flow_run.labels or {}
        return await super()._submit_scheduled_flow_runs(ready)

    async def _give_worker_labels_to_flow_run(self, flow_run_id: UUID) -> None:
        # A resumed order is usually claimed by the worker that ran its last segment: its name is on the run.
        labels = self._labelled.pop(flow_run_id, {})
        if labels.get("prefect.worker.name") != self.name or labels.get("prefect.work-pool.name") != \
                self._work_pool_name:
            await super()._give_worker_labels_to_flow_run(flow_run_id)

    async def _propose_submitting_state(self, flow_run: FlowRun) -> None:
        # Pending "Submitting" between the claim (Pending) and the engine's Running says nothing here, where
        # the two are milliseconds apart, and costs a state change (and its event) per segment.
        return None

    def _release_limit_slot(self, flow_run_id: UUID) -> None:
        super()._release_limit_slot(flow_run_id)
        self._labelled.pop(flow_run_id, None)  # a claim lost to another worker leaves its entry
        if flow_run_id in self._deferred:
            self._deferred.discard(flow_run_id)
            self.wake()
        if self._limit_reached:  # runs may be waiting for this slot: take the next one now
            self._limit_reached = False
            self.wake()

    async def _listen_for_events(self) -> None:
        """Wake on state changes of this pool's runs. While the stream is down, the poll claims runs."""
        delay = 1.0
        while True:
            if self._work_pool is None:
                await anyio.sleep(0.2)
                continue
            names = [*WAKE_EVENTS, CANCELLING_EVENT, SUSPENDED_EVENT]
            event_filter = EventFilter(event=EventNameFilter(name=names), any_resource=EventAnyResourceFilter(
                id=[f"prefect.work-pool.{self._work_pool.id}"]))
            try:
                async with get_events_subscriber(filter=event_filter, reconnection_attempts=2) as events:
                    self.events_connected, delay = True, 1.0
                    log.info("worker %s woken by Prefect's events", self.name)
                    self.wake()  # what became claimable while the stream was down
                    async for event in events:
                        self._on_event(event)
            except Exception as exc:
                log.warning("events stream unavailable (%s); polling every %s s until it is back",
                            type(exc).__name__, self._query_seconds())
            finally:
                self.events_connected = False
            await anyio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _on_event(self, event: Event) -> None:
        log.debug("event %s %s (%.0f ms after it occurred)", event.event, event.resource.id,
                  (time.time() - event.occurred.timestamp()) * 1000)
        try:
            flow_run_id = UUID(event.resource.id.removeprefix("prefect.flow-run."))
        except ValueError:
            return
        if event.event in WAKE_EVENTS:
            queue = event.resource_in_role.get("work-queue") if self._work_queues else None
            if queue is None or queue.get("prefect.resource.name") in self._work_queues:
                self._hints.setdefault(flow_run_id, 0)
                self.wake()
            return
        if flow_run_id not in self._executing or self._runs_task_group is None:
            return
        if event.event == CANCELLING_EVENT:
            self._runs_task_group.start_soon(self._cancel_run, flow_run_id)
        elif event.event == SUSPENDED_EVENT and shares_suspension_observer():
            self._runs_task_group.start_soon(self._suspend_run, flow_run_id)

    async def _suspend_run(self, flow_run_id: UUID) -> None:
        """Someone suspended a run while it executes here (the UI's Suspend): tell its engine, which raises
        Pause at its next step, as Prefect's own per-run observer would."""
        run = await self.client.read_flow_run(flow_run_id)
        if run.state is not None and flow_run_id in self._executing:
            mark_suspended(flow_run_id, run.state)

    @staticmethod
    def _query_seconds() -> float:
        from prefect.settings import PREFECT_WORKER_QUERY_SECONDS
        return float(PREFECT_WORKER_QUERY_SECONDS.value())

    # -- execution ---------------------------------------------------------------------------------------

    async def run(self, flow_run: FlowRun, configuration: WarmJobConfiguration,
                  task_status: anyio.abc.TaskStatus[Any] | None = None) -> WarmWorkerResult:
        if configuration._entrypoint is None:
            raise ValueError(f"flow run {flow_run.id} has no deployment entrypoint to import")
        # Claimed (Pending, the worker's name on the run) and not started: the window the fault tests kill in.
        failpoints.hit("after-claim", flow_run.name)
        assert self._executor is not None
        execution = InProcessRun(flow_run.id)
        self._executing[flow_run.id] = execution
        self._in_run.add(flow_run.id)
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, self._execute, flow_run, configuration._entrypoint, execution)
            if task_status is not None:
                # "Submitted to infrastructure": Prefect records this as the run's infrastructure_pid.
                task_status.started(self.identifier)
            status = await asyncio.shield(future)
        finally:
            self._in_run.discard(flow_run.id)
        return WarmWorkerResult(status_code=status, identifier=self.identifier)

    def _execute(self, flow_run: FlowRun, entrypoint: str, execution: InProcessRun) -> int:
        """On a thread of the pool; see in_process_runs.execute."""
        log.debug("executing %s", flow_run.id)
        try:
            return execute(self.flows, flow_run, entrypoint, execution, self.get_flow_run_logger(flow_run))
        finally:
            self._executing.pop(flow_run.id, None)
            log.debug("executed %s", flow_run.id)

    async def _cancel_run(self, flow_run_id: UUID) -> None:
        """A run cancelled (UI, API) while it executes here: its task is cancelled and its engine records
        Cancelled. Runs not started yet go the base worker's way."""
        execution = self._executing.get(flow_run_id)
        if execution is None:
            await super()._cancel_run(flow_run_id)
            return
        if not execution.cancel():
            log.warning("flow run %s cannot be interrupted (sync, or not started yet); it is marked cancelled"
                        " and its engine stops at its next state change", flow_run_id)
        await anyio.to_thread.run_sync(execution.done.wait, 10.0)
        run = await self.client.read_flow_run(flow_run_id)
        if run.state is None or not run.state.is_final():
            await self.client.set_flow_run_state(flow_run_id, Cancelled(message="Cancelled while executing."),
                                                 force=True)

    async def kill_infrastructure(self, infrastructure_pid: str, configuration: WarmJobConfiguration,
                                  grace_seconds: int = 30) -> None:
        # A pending run's "infrastructure" is a thread of this process that has not started it: nothing to
        # kill. The base worker then marks the run Cancelled.
        return None

    def executing(self) -> list[UUID]:
        return list(self._executing)


def main(argv: list[str] | None = None) -> None:
    """`python -m tasks.adapters.warm_worker --pool NAME [--queue Q ...] [--limit N] [--name NAME]`"""
    p = argparse.ArgumentParser(prog="python -m tasks.adapters.warm_worker", description=__doc__.split("\n")[0])
    p.add_argument("--pool", required=True, help="work pool to take runs from")
    p.add_argument("--queue", action="append", default=None, help="work queue(s) of the pool; all when left out")
    p.add_argument("--name", default=None, help="worker name (unique per process; default: host and a random id)")
    p.add_argument("--limit", type=int, default=16, help="flow runs executing at once (threads)")
    p.add_argument("--code-dir", default=None, help="where deployment entrypoints are imported from (default: .)")
    p.add_argument("--heartbeat-seconds", type=int, default=10)
    p.add_argument("--no-events", action="store_true", help="poll only; do not wake on Prefect's events")
    p.add_argument("--no-preload", action="store_true", help="import flows at their first run, not at start")
    p.add_argument("--own-suspension-observers", action="store_true",
                   help="keep Prefect's per-run suspension observer (one websocket per running run)")
    p.add_argument("--debug", action="store_true", help="log claims, events and executions")
    args = p.parse_args(argv)
    # In production (no embedded login, no demo) a worker starts only when `restriction-orders doctor` would.
    from tasks.adapters.doctor import refuse_to_start_if_broken
    from tasks.adapters.settings import Settings
    refuse_to_start_if_broken(Settings(), "arbetaren")
    if args.debug:
        log.setLevel(logging.DEBUG)
    name = args.name or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
    worker = WarmWorker(args.pool, work_queues=args.queue, name=name, limit=args.limit, code_dir=args.code_dir,
                        heartbeat_interval_seconds=args.heartbeat_seconds, wake_on_events=not args.no_events,
                        preload=not args.no_preload, share_suspension_observer=not args.own_suspension_observers)
    asyncio.run(serve(worker))


async def serve(worker: WarmWorker) -> None:
    """Run the worker until SIGTERM or SIGINT, then stop claiming and let the segments in flight finish (a
    rolling restart loses no segment; a SIGKILL does, and crash_stuck_runs then finds its runs)."""
    import signal
    loop, this = asyncio.get_running_loop(), asyncio.current_task()
    assert this is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Only the main thread's loop can take signals; elsewhere (a worker beside the app) the host stops it.
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            loop.add_signal_handler(sig, this.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await worker.start()


if __name__ == "__main__":
    main()
