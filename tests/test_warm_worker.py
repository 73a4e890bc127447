"""The warm worker (tasks/adapters/warm_worker.py), the stuck-run sweep (tasks/adapters/stuck_runs.py) and the
quiet suspension log (tasks/adapters/quiet_suspensions.py), against a real Prefect server and real worker
processes running the toy flows of tests/warm_toy_flows.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
TOYS = "tests/warm_toy_flows.py"


class WarmWorkers:
    """Warm worker processes on pools of their own, and the toy flows deployed to those pools."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.marks = tmp / "marks"
        self.release = tmp / "release"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, pool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "WARM_TOY_MARKS": str(self.marks),
                    "WARM_TOY_RELEASE": str(self.release), **(env or {})}
        with open(self.tmp / f"worker-{pool}-{len(self.procs)}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "tasks.adapters.warm_worker", "--pool", pool,
                                     "--code-dir", str(ROOT), "--heartbeat-seconds", "2", *args],
                                    cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.kill(proc)

    def lines(self) -> list[list[str]]:
        try:
            return [line.split() for line in self.marks.read_text().splitlines()]
        except FileNotFoundError:
            return []


@pytest.fixture(scope="module")
def workers(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarmWorkers]:
    w = WarmWorkers(tmp_path_factory.mktemp("warm"))
    yield w
    w.stop_all()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def deploy(pool: str, entrypoint: str, flow_name: str) -> uuid.UUID:
    """The pool (of the warm type) and a deployment of the toy flow at `entrypoint` in it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from tasks.adapters.warm_worker import WarmWorker
    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(
                name=pool, type="warm", base_job_template=WarmWorker.get_default_base_job_template()))
        flow_id = await client.create_flow_from_name(flow_name)
        return await client.create_deployment(
            flow_id=flow_id, name=f"{pool}-{flow_name}", entrypoint=entrypoint, work_pool_name=pool,
            parameter_openapi_schema={"type": "object", "properties": {"ref": {"type": "string"}},
                                      "required": ["ref"]})


async def create_run(deployment_id: uuid.UUID, ref: str) -> uuid.UUID:
    from prefect.client.orchestration import get_client
    async with get_client() as client:
        fr = await client.create_flow_run_from_deployment(deployment_id, parameters={"ref": ref}, name=ref)
        return fr.id


async def read_run(run_id: uuid.UUID) -> Any:
    from prefect.client.orchestration import get_client
    async with get_client() as client:
        return await client.read_flow_run(run_id)


def wait_for(run_id: uuid.UUID, ok: Callable[[Any], bool], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fr = run(read_run(run_id))
        if fr.state is not None and ok(fr):
            return fr
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {fr.state!r} after {timeout} s")


def suspended(fr: Any) -> bool:
    return bool(fr.state.is_paused() and fr.state.name == "Suspended")


def final(fr: Any) -> bool:
    return bool(fr.state.is_final())


async def resume(run_id: uuid.UUID, ok: bool = True) -> None:
    from prefect.flow_runs import aresume_flow_run
    await aresume_flow_run(run_id, run_input={"ok": ok})


async def run_logs(run_id: uuid.UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    async with get_client() as client:
        return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))


def test_runs_in_the_workers_process_and_resumes_from_the_top(workers: WarmWorkers) -> None:
    dep = run(deploy("warm-a", f"{TOYS}:toy_wait", "toy-wait"))
    worker = workers.start("warm-a")
    run_id = run(create_run(dep, "W-1"))
    fr = wait_for(run_id, suspended)
    # Claimed through Prefect's Pending proposal by this worker, executed in its own process.
    assert fr.labels["prefect.worker.type"] == "warm"
    assert fr.infrastructure_pid.endswith(f":{worker.pid}")
    run(resume(run_id))
    fr = wait_for(run_id, final)
    assert fr.state.is_completed(), fr.state
    mine = [line for line in workers.lines() if line[0] == "W-1"]
    # The resumed segment re-ran the flow from the top, as with the process worker, in the same process.
    assert [what for _, what, _ in mine] == ["code", "receive", "code", "receive", "record-True"]
    assert {pid for _, _, pid in mine} == {str(worker.pid)}
    # The suspension's "Finished in state Suspended" reached the run's logs at INFO, not ERROR.
    time.sleep(2)  # logs are shipped in batches
    finished = [(lg.level, lg.message) for lg in run(run_logs(run_id)) if lg.message.startswith("Finished in state")]
    assert (logging.INFO, "Finished in state Suspended(type=PAUSED)") in finished
    assert (logging.INFO, "Finished in state Completed()") in finished


def test_a_raising_flow_fails_and_a_broken_run_crashes(workers: WarmWorkers) -> None:
    dep_fail = run(deploy("warm-a", f"{TOYS}:toy_fail", "toy-fail"))
    dep_missing = run(deploy("warm-a", f"{TOYS}:no_such_flow", "toy-missing"))
    if not any(p.poll() is None for p in workers.procs):
        workers.start("warm-a")
    failed = run(create_run(dep_fail, "W-2"))
    broken = run(create_run(dep_missing, "W-3"))
    assert wait_for(failed, final).state.is_failed()
    # The engine never started: the worker reports the run Crashed, never leaves it Running or Pending.
    assert wait_for(broken, final).state.is_crashed()
    # And it keeps working.
    dep = run(deploy("warm-a", f"{TOYS}:toy_quick", "toy-quick"))
    assert wait_for(run(create_run(dep, "W-4")), final).state.is_completed()


def test_two_workers_never_run_the_same_run(workers: WarmWorkers) -> None:
    dep = run(deploy("warm-two", f"{TOYS}:toy_wait", "toy-wait"))
    a, b = workers.start("warm-two"), workers.start("warm-two")
    refs = [f"T-{i}" for i in range(12)]
    ids = [run(create_run(dep, ref)) for ref in refs]
    for run_id in ids:
        wait_for(run_id, suspended)
    for run_id in ids:
        run(resume(run_id))
    for run_id in ids:
        assert wait_for(run_id, final).state.is_completed()
    lines = [line for line in workers.lines() if line[0] in refs]
    for ref in refs:
        # Each segment ran exactly once: two segments, each with one "code" and one "receive".
        whats = [what for r, what, _ in lines if r == ref]
        assert whats.count("code") == 2 and whats.count("receive") == 2 and whats.count("record-True") == 1, whats
    assert {pid for _, _, pid in lines} <= {str(a.pid), str(b.pid)}


def test_a_run_claimed_by_a_worker_killed_before_starting_it_is_crashed(workers: WarmWorkers) -> None:
    """SIGKILL after the claim and before the engine starts the run: the run waits in Pending/Submitting,
    where no flow-run heartbeat ever comes. The sweep crashes it once its worker's heartbeats stop."""
    from prefect.client.orchestration import get_client

    from tasks.adapters.stuck_runs import crash_stuck_runs
    dep = run(deploy("warm-kill", "tests/warm_toy_slow_import.py:toy_slow_import", "toy-slow-import"))
    worker = workers.start("warm-kill", "--no-preload", env={"WARM_TOY_IMPORT_SECONDS": "120"})
    run_id = run(create_run(dep, "K-1"))
    deadline = time.monotonic() + 60
    while not any(line[1] == "importing" for line in workers.lines()):  # claimed; its flow is being imported
        assert time.monotonic() < deadline, "the worker never claimed the run"
        time.sleep(0.2)
    fr = run(read_run(run_id))
    assert fr.state.is_pending() and fr.labels["prefect.worker.name"], fr.state
    workers.kill(worker)
    killed = time.monotonic()
    threshold = 5.0

    async def sweep() -> list[Any]:
        async with get_client() as client:
            return await crash_stuck_runs(client, ["toy-slow-import"], threshold=threshold)

    assert run(sweep()) == []  # not yet: the worker's last heartbeat is recent
    crashed: list[Any] = []
    while not crashed:
        assert time.monotonic() - killed < 30, "the stuck run was not crashed"
        time.sleep(1)
        crashed = run(sweep())
    took = time.monotonic() - killed
    print(f"claimed-not-started run crashed {took:.1f} s after the SIGKILL")
    assert [c.flow_run_id for c in crashed] == [run_id]
    assert crashed[0].was.startswith("Pending") and "never started" in crashed[0].reason
    assert run(read_run(run_id)).state.is_crashed()
    # Heartbeats every 2 s here: found within the threshold plus two heartbeats and a sweep.
    assert took < threshold + 2 * 2 + 2, took


def test_a_run_lost_with_its_worker_mid_segment_is_crashed_and_a_live_ones_is_not(workers: WarmWorkers) -> None:
    from prefect.client.orchestration import get_client

    from tasks.adapters.stuck_runs import crash_stuck_runs
    workers.release.unlink(missing_ok=True)
    dep = run(deploy("warm-lost", f"{TOYS}:toy_block", "toy-block"))
    doomed = workers.start("warm-lost")
    run_id = run(create_run(dep, "L-1"))
    wait_for(run_id, lambda fr: fr.state.is_running())
    threshold = 3.0

    async def sweep() -> list[Any]:
        async with get_client() as client:
            return await crash_stuck_runs(client, ["toy-block"], threshold=threshold)

    time.sleep(threshold + 2)
    assert run(sweep()) == []  # Running longer than the threshold, but its worker is alive
    workers.kill(doomed)
    killed = time.monotonic()
    crashed: list[Any] = []
    while not crashed:
        assert time.monotonic() - killed < 30, "the lost run was not crashed"
        time.sleep(1)
        crashed = run(sweep())
    print(f"lost run crashed {time.monotonic() - killed:.1f} s after the SIGKILL")
    assert [c.flow_run_id for c in crashed] == [run_id] and "lost with its worker" in crashed[0].reason
    assert run(read_run(run_id)).state.is_crashed()


def test_a_run_cancelled_while_it_executes_ends_cancelled(workers: WarmWorkers) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling
    workers.release.unlink(missing_ok=True)
    dep = run(deploy("warm-cancel", f"{TOYS}:toy_block", "toy-block"))
    workers.start("warm-cancel")
    run_id = run(create_run(dep, "C-1"))
    wait_for(run_id, lambda fr: fr.state.is_running())

    async def cancel() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Cancelling())

    run(cancel())
    assert wait_for(run_id, final, timeout=30).state.is_cancelled()

    async def history() -> list[str]:
        async with get_client() as client:
            return [st.type.value for st in await client.read_flow_run_states(run_id)]

    # Cancelled by its engine, as a process worker's run would be; never reported as a crash on the way.
    assert "CRASHED" not in run(history()), run(history())


def test_sigterm_lets_the_segment_in_flight_finish(workers: WarmWorkers) -> None:
    workers.release.unlink(missing_ok=True)
    dep = run(deploy("warm-term", f"{TOYS}:toy_block", "toy-block"))
    worker = workers.start("warm-term")
    run_id = run(create_run(dep, "S-1"))
    wait_for(run_id, lambda fr: fr.state.is_running())
    os.killpg(worker.pid, signal.SIGTERM)
    time.sleep(1)
    assert worker.poll() is None  # still there: its run is executing
    workers.release.touch()
    assert wait_for(run_id, final, timeout=30).state.is_completed()
    assert worker.wait(30) == 0


def test_a_resumed_run_is_claimed_on_the_event_not_the_poll(workers: WarmWorkers) -> None:
    """Polling every 60 s: the resumed segment starts within seconds only because the event woke the worker."""
    dep = run(deploy("warm-events", f"{TOYS}:toy_wait", "toy-wait"))
    workers.start("warm-events", env={"PREFECT_WORKER_QUERY_SECONDS": "60"})
    time.sleep(5)  # the worker's first poll is over: only an event can start the run below in time
    run_id = run(create_run(dep, "E-1"))
    wait_for(run_id, suspended, timeout=20)
    run(resume(run_id))
    started = time.monotonic()
    assert wait_for(run_id, final, timeout=20).state.is_completed()
    assert time.monotonic() - started < 10


def test_suspensions_log_at_info_and_failures_stay_errors() -> None:
    from tasks.adapters.quiet_suspensions import SuspensionsAtInfo, add_to_logging_config

    def level(msg: str, lvl: int = logging.ERROR) -> str:
        record = logging.LogRecord("prefect.flow_runs", lvl, __file__, 1, msg, None, None)
        assert SuspensionsAtInfo().filter(record)
        return record.levelname

    assert level("Finished in state Suspended(type=PAUSED)") == "INFO"
    assert level("Finished in state Paused()") == "INFO"
    assert level("Finished in state Cancelled('order cancelled')") == "INFO"
    assert level("Finished in state AwaitingRetry(type=SCHEDULED)") == "WARNING"
    assert level("Finished in state Failed('Flow run encountered an exception: ValueError')") == "ERROR"
    assert level("Finished in state Crashed('Execution was cancelled by the runtime environment.')") == "ERROR"
    assert level("Finished in state Failed('said type=PAUSED')") == "ERROR"
    assert level("Something else Suspended(type=PAUSED)") == "ERROR"
    # The same filter through Prefect's logging settings file (PREFECT_LOGGING_SETTINGS_PATH).
    config = add_to_logging_config({"version": 1, "loggers": {"prefect.flow_runs": {"level": "NOTSET"}}})
    assert config["loggers"]["prefect.flow_runs"]["filters"] == ["suspensions_at_info"]
    made = logging.config.DictConfigurator(config).configure_filter(config["filters"]["suspensions_at_info"])
    assert isinstance(made, SuspensionsAtInfo)
