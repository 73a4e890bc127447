"""Flow runs executed inside a long-lived process (the warm worker's side of Prefect's engine).

Prefect runs a flow run of a deployment in a process of its own (`python -m prefect.engine`), and a few parts
of its engine assume so: the flow is imported from its file for that one run, and two process-wide
mechanisms are set up per run. This module gives those parts what they need when one process executes many
flow runs, one per thread, each thread with its own event loop:

- `FlowCache`: flows imported once per deployment entrypoint, as the modules the rest of the code imports;
- `execute`: what `python -m prefect.engine` does with a claimed run, on the calling thread, reporting
  whether the engine recorded the outcome (so the worker knows when to report a crash itself);
- `InProcessRun.cancel`: a cancellation the engine recognises as such, for one run among many;
- `share_suspension_observer`: one observer of external suspensions for the process instead of one per run.

The last two adjust Prefect internals (`prefect.flow_engine`), checked at start and left alone if they have
moved: tests/test_warm_worker.py covers both through a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
import threading
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect.exceptions import Abort, Pause
from prefect.flows import Flow

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun, State

log = logging.getLogger("restriction_orders.warm_worker")


class FlowCache:
    """Flows by deployment entrypoint, each imported once for the life of the process.

    `flows/order.py:order` under `code_dir` is imported as the module `flows.order`, the same module object
    the rest of the code imports, not as a second copy of the file (Prefect's own loader executes the file
    under a private module name, and is not thread-safe)."""

    def __init__(self, code_dir: Path) -> None:
        self.code_dir = code_dir.resolve()
        self._flows: dict[str, Flow[..., Any]] = {}
        self._lock = threading.Lock()
        if str(self.code_dir) not in sys.path:
            sys.path.insert(0, str(self.code_dir))

    def load(self, entrypoint: str) -> Flow[..., Any]:
        cached = self._flows.get(entrypoint)
        if cached is not None:
            return cached
        with self._lock:
            if entrypoint not in self._flows:
                self._flows[entrypoint] = self._import(entrypoint)
            return self._flows[entrypoint]

    def _import(self, entrypoint: str) -> Flow[..., Any]:
        if ":" in entrypoint:
            path, name = entrypoint.rsplit(":", 1)
            file = (self.code_dir / path).resolve()
            if file.suffix != ".py" or not file.is_relative_to(self.code_dir):
                # Outside the code: Prefect's own loader (not thread-safe; this runs under the lock).
                from prefect.flows import load_flow_from_entrypoint
                return load_flow_from_entrypoint(f"{file}:{name}", use_placeholder_flow=False)
            module = ".".join(file.relative_to(self.code_dir).with_suffix("").parts)
        else:
            module, name = entrypoint.rsplit(".", 1)
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, Flow):
            raise TypeError(f"{entrypoint} is not a Prefect flow")
        return obj

    def __contains__(self, entrypoint: str) -> bool:
        return entrypoint in self._flows


@dataclass
class InProcessRun:
    """A flow run executing on one of the worker's threads."""

    flow_run_id: UUID
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False

    def cancel(self) -> bool:
        """Interrupt the run's task, telling its engine that this is a cancellation (not a crash)."""
        if self.loop is None or self.task is None:
            return False
        task = self.task

        def in_the_runs_thread() -> None:
            _this_thread.cancelling = True
            task.cancel()

        self.cancelled = True
        self.loop.call_soon_threadsafe(in_the_runs_thread)
        return True


# Per flow-run thread: whether the worker is cancelling the run executing on it.
_this_thread = threading.local()
_PATCHED: set[str] = set()


def cancellation_per_thread() -> None:
    """The engine tells a cancellation from a crash by the "termination intent" that Prefect's runner sets
    for its child process before it interrupts it: one per process. Here a process runs many flow runs, so
    the intent is answered per thread: "cancel" on the thread of a run this worker is cancelling, the
    process-wide answer otherwise. The engine then records Cancelling and Cancelled itself, as when a
    process worker cancels a run. Prefect-internal, hence checked: left alone if it has moved."""
    import prefect.flow_engine
    if "intent" in _PATCHED or not hasattr(prefect.flow_engine, "_termination_intent"):
        return
    process_wide = prefect.flow_engine._termination_intent

    def termination_intent() -> Any:
        return "cancel" if getattr(_this_thread, "cancelling", False) else process_wide()

    prefect.flow_engine._termination_intent = termination_intent
    _PATCHED.add("intent")


_SHARED_OBSERVER = False


def shares_suspension_observer() -> bool:
    """Whether this process's runs rely on the worker's observer of suspensions (see below)."""
    return _SHARED_OBSERVER


def share_suspension_observer() -> None:
    """Prefect's engine gives every flow run of a deployment its own observer of external suspension (the
    UI's Suspend on a running run): a thread, an event loop, a client and a websocket subscription to the
    events stream that replays the last minute of suspension events, set up before the flow starts and torn
    down after it. In a process that executes many short segments that is most of a segment's own cost, and
    one more subscriber per running run for the server to feed. This worker already follows its pool's
    events, so it observes suspensions for all its runs (`mark_suspended`) and the engine's own
    observer is turned off in this process. Prefect-internal, hence checked: left alone if it has moved."""
    global _SHARED_OBSERVER
    import prefect.flow_engine
    if not hasattr(prefect.flow_engine, "observe_flow_run_suspension"):
        log.warning("Prefect's per-run suspension observer not found; left as it is")
        return

    @contextlib.contextmanager
    def _observed_by_the_worker(*_: Any, **__: Any) -> Iterator[None]:
        yield

    prefect.flow_engine.observe_flow_run_suspension = _observed_by_the_worker  # type: ignore[assignment]
    _SHARED_OBSERVER = True


def mark_suspended(flow_run_id: UUID, state: State[Any]) -> None:
    """A run executing here was suspended from outside: its engine raises Pause at its next step."""
    from prefect._flow_run_suspension import is_suspended_flow_run_state, mark_flow_run_suspension_requested
    if is_suspended_flow_run_state(state):
        mark_flow_run_suspension_requested(flow_run_id, state)


def execute(flows: FlowCache, flow_run: FlowRun, entrypoint: str, run: InProcessRun, run_logger: Any) -> int:
    """Run a claimed flow run on this thread, as `python -m prefect.engine` would. 0 when the engine recorded
    the outcome (Completed, Failed, Suspended, Cancelled...), 1 when it did not: the caller reports Crashed."""
    from prefect.flow_engine import run_flow
    try:
        try:
            flow = flows.load(entrypoint)
            if flow.isgenerator:
                raise TypeError("generator flows are not supported by the warm worker")
        except Exception:
            run_logger.error("Could not load the flow %s", entrypoint, exc_info=True)
            return 1
        if flow.isasync:
            state = asyncio.run(_run_async(flow, flow_run, run, run_logger))
        else:
            state = run_flow(flow, flow_run=flow_run, return_type="state", error_logger=cast(Any, run_logger))
    except (Pause, Abort):  # suspended, or the server refused a transition: it holds the state
        return 0
    except BaseException:  # run_flow has logged it on the run
        return 0 if run.cancelled else 1
    finally:
        _this_thread.cancelling = False  # the thread runs other flow runs next
        run.done.set()
    return 0 if state is None or state.is_final() or state.is_paused() or state.is_scheduled() else 1


async def _run_async(flow: Flow[..., Any], flow_run: FlowRun, run: InProcessRun, run_logger: Any) -> Any:
    from prefect.flow_engine import run_flow
    run.loop, run.task = asyncio.get_running_loop(), asyncio.current_task()
    engine = run_flow(flow, flow_run=flow_run, return_type="state", error_logger=run_logger)
    return await cast(Awaitable[Any], engine)
