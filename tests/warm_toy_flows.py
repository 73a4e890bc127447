"""Toy flows for tests/test_warm_worker.py, run by a real warm worker (tasks/adapters/warm_worker.py).

Each appends `<ref> <what> <pid>` to $WARM_TOY_MARKS, so a test sees which process ran which segment.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import asuspend_flow_run
from prefect.input import RunInput


class Go(RunInput):
    ok: bool


def mark(ref: str, what: str) -> None:
    fd = os.open(os.environ["WARM_TOY_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ref} {what} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@task(name="toy-step", persist_result=False, cache_policy=NO_CACHE)
def step(ref: str, what: str) -> str:
    mark(ref, what)
    return what


@flow(name="toy-wait", persist_result=False)
async def toy_wait(ref: str) -> str:
    """Receive, suspend for a decision, record it: two segments, the second re-running from the top."""
    mark(ref, "code")
    step(ref, "receive")
    decision = await asuspend_flow_run(wait_for_input=Go, key="decide", timeout=600)
    step(ref, f"record-{decision.ok}")
    return ref


@flow(name="toy-quick", persist_result=False)
async def toy_quick(ref: str) -> str:
    mark(ref, "code")
    return ref


@flow(name="toy-fail", persist_result=False)
async def toy_fail(ref: str) -> str:
    mark(ref, "code")
    raise ValueError("the toy step failed")


@flow(name="toy-block", persist_result=False)
async def toy_block(ref: str) -> str:
    """Runs until the file $WARM_TOY_RELEASE exists (a segment that is busy when its worker dies)."""
    mark(ref, "code")
    release = Path(os.environ["WARM_TOY_RELEASE"])
    while not release.exists():
        await asyncio.sleep(0.1)
    mark(ref, "released")
    return ref
