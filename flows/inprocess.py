"""The routine without Prefect: an engine that runs an order's flow in this process, as Prefect would.

It keeps Prefect's semantics where the routine relies on them: one run per idempotency key; a human step
suspends the run (it stops where it waits); a resume hands the input to the waiting key and the run starts
again from the top, the steps finding their work done in the orders database; a run that is not waiting
cannot be resumed; a cancelled run stays cancelled. Runs execute inline, in the caller: when a command
returns, the run has gone as far as it can. For the routine's unit tests and the API tests that do not need
a Prefect server (built by flows/bootstrap.in_process).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

from models.routine import Stage
from tasks.adapters import Adapters
from tasks.adapters.engine import RunInfo

T = TypeVar("T")
log = logging.getLogger(__name__)
FINAL = ("completed", "failed", "crashed", "cancelled")


class Suspended(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass
class InProcessRun:
    """One segment of a run: steps called directly, a wait that has no input yet suspends."""
    inputs: dict[str, dict[str, Any]]
    steps: list[str] = field(default_factory=list)

    async def step(self, name: str, fn: Callable[..., T], ad: Adapters, *args: Any, retries: int = 0,
                   retry_delays: Sequence[float] = ()) -> T:
        self.steps.append(name)
        attempt = 0
        while True:
            try:
                return fn(ad, *args)
            except Exception:
                if attempt >= retries:
                    raise
                await asyncio.sleep(retry_delays[min(attempt, len(retry_delays) - 1)] if retry_delays else 0)
                attempt += 1

    async def wait(self, stage: Stage, key: str) -> int | None:
        if key in self.inputs:
            value = self.inputs[key].get("decision_id")
            return int(value) if isinstance(value, int) else None
        raise Suspended(key)

    def cancelled(self) -> Any:
        return "cancelled"

    def logger(self) -> logging.Logger:
        return log


@dataclass
class FakeRun:
    id: str
    flow_name: str
    reference: str
    tags: list[str]
    work_queue: str | None
    state: str = "scheduled"
    waiting_key: str | None = None
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    segments: int = 0
    steps: list[str] = field(default_factory=list)


class InProcessEngine:
    def __init__(self) -> None:
        self.runs: dict[str, FakeRun] = {}
        self.by_key: dict[str, str] = {}
        self.cards: dict[str, list[str]] = {}
        self._ad: Adapters | None = None

    def bind(self, ad: Adapters) -> None:
        self._ad = ad

    async def create_run(self, flow_name: str, reference: str, *, key: str, tags: list[str],
                         work_queue: str | None) -> str:
        if key in self.by_key:
            return self.by_key[key]
        run = FakeRun(str(uuid.uuid4()), flow_name, reference, list(tags), work_queue)
        self.runs[run.id] = run
        self.by_key[key] = run.id
        return run.id

    async def begin(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is not None and run.state == "scheduled":
            await self._execute(run)

    async def _execute(self, run: FakeRun) -> None:
        from flows.order import routine  # the routine is the service layer's; this engine only runs it
        assert self._ad is not None, "bind() the adapters first"
        run.state, run.segments = "running", run.segments + 1
        segment = InProcessRun(run.inputs)
        try:
            result = await routine(self._ad, segment, run.reference)
        except Suspended as s:
            if run.state == "running":
                run.state, run.waiting_key = "paused", s.key
        except Exception as exc:
            log.warning("run of %s failed: %s", run.reference, type(exc).__name__)
            if run.state == "running":
                run.state = "failed"
        else:
            if run.state == "running":
                run.state = "cancelled" if result == "cancelled" else "completed"
        finally:
            run.steps += segment.steps

    async def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        await coro

    async def work_queue_for(self, flow_name: str, urgent: bool) -> str | None:
        return None  # like a served deployment: no work pool, no queues

    async def resume(self, run_id: str, run_input: dict[str, Any]) -> bool:
        run = self.runs.get(run_id)
        if run is None or run.state != "paused" or run.waiting_key is None:
            return False
        run.inputs[run.waiting_key] = dict(run_input)
        run.state, run.waiting_key = "scheduled", None
        await self._execute(run)
        return True

    async def set_state(self, run_id: str, state: str, message: str) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            run.state = state

    async def read_run(self, run_id: str) -> RunInfo:
        run = self.runs[run_id]
        return RunInfo(run.id, run.state, run.state.title(), run.work_queue, tuple(run.tags))

    async def read_runs(self, run_ids: list[str]) -> dict[str, RunInfo]:
        return {r: await self.read_run(r) for r in run_ids if r in self.runs}

    async def add_tag(self, run_id: str, tag: str) -> None:
        run = self.runs.get(run_id)
        if run is not None and tag not in run.tags:
            run.tags.append(tag)

    def fails_fast(self, timeout: float = 10.0) -> AbstractContextManager[Any]:
        return nullcontext()

    def publish_card(self, key: str, markdown: str, description: str, run_id: str | None) -> None:
        self.cards.setdefault(key, []).append(markdown)

    async def health(self) -> tuple[bool, str]:
        return True, "i processen"

    def run_of(self, reference: str) -> FakeRun | None:
        """The latest run of an order (for tests)."""
        runs = [r for r in self.runs.values() if r.reference == reference]
        return runs[-1] if runs else None


__all__ = ["FINAL", "InProcessEngine", "InProcessRun", "Suspended"]
