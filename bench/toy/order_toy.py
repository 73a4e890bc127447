"""A toy flow shaped like an order, for bench/bench_engine_floor.py: receive, wait for an assessment, record it, wait
for an approval, record it, execute, confirm, notify. Three segments (a resumed run re-runs from the top, as
the order flows do); the steps are trivial, so what is measured is Prefect and the way runs are executed.

`task_runs=6` makes each of the six steps a task run; `task_runs=3` keeps receive, execute and confirm as
task runs and runs the other three as plain functions; above 6, the last segment adds trivial task runs
(to price a task run). Progress lives in a file per order (the order flows
keep theirs in the orders database), so a re-run from the top skips the steps already done. Each step
appends a line `<ref> <mark> <time.time()> <pid>` to $BENCH_MARKS, which the driver reads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import asuspend_flow_run
from prefect.input import RunInput


class Decision(RunInput):
    ok: bool


def mark(ref: str, what: str) -> None:
    path = os.environ.get("BENCH_MARKS")
    if path:
        # One short write with O_APPEND: lines from many processes and threads do not interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ref} {what} {time.time():.6f} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def _done_file(ref: str) -> Path:
    return Path(os.environ.get("BENCH_STATE_DIR", "/tmp")) / f"{ref}.done"


def done_steps(ref: str) -> set[str]:
    try:
        return set(_done_file(ref).read_text().split())
    except FileNotFoundError:
        return set()


def step(ref: str, name: str) -> str:
    mark(ref, name)
    with open(_done_file(ref), "a") as f:
        f.write(name + "\n")
    return name


def _as_task(name: str) -> Callable[[str, str], str]:
    return task(name=name, persist_result=False, cache_policy=NO_CACHE)(step)


TASKS = {name: _as_task(name) for name in ("receive", "record-assess", "record-approve", "execute", "confirm",
                                           "notify")}
AS_TASK_WITH_3 = {"receive", "execute", "confirm"}


def _run_step(ref: str, name: str, task_runs: int, done: set[str]) -> None:
    if name in done:
        return
    if task_runs >= 6 or name in AS_TASK_WITH_3:
        TASKS[name](ref, name)
    else:
        step(ref, name)


@flow(name="toy-order", persist_result=False)
async def toy_order(ref: str, task_runs: int = 6) -> str:
    mark(ref, "code")
    done = done_steps(ref)
    _run_step(ref, "receive", task_runs, done)
    await asuspend_flow_run(wait_for_input=Decision, key="assess", timeout=3600)
    _run_step(ref, "record-assess", task_runs, done)
    await asuspend_flow_run(wait_for_input=Decision, key="approve", timeout=3600)
    _run_step(ref, "record-approve", task_runs, done)
    for name in ("execute", "confirm", "notify"):
        _run_step(ref, name, task_runs, done)
    for i in range(max(0, task_runs - 6)):
        TASKS["notify"](ref, f"extra-{i}")
    mark(ref, "done")
    return ref

