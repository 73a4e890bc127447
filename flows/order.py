"""The order flow, written once; one Prefect flow per order type is made from it (names as in prefect.yaml).

The routine, top to bottom: receive the order (check it again and plan its stages) → each planned human
stage (urgent: the callback; the harm assessment; the approval), which waits for a person or is recorded as
not required → execution (through the gateway, or by an account administrator; paper when the execution
system is down) → confirmation emails. The definition of the stages (who decides, where a decision leads)
is models/routine.py; the steps are tasks/steps/stages.py.

A human step suspends the run (no process is held while people decide, for days if need be). The key of
each suspension is the stage plus the number of refused decisions, so a refused decision leaves the order
waiting under a fresh key, and a resumed run that re-runs from the top gets the stored input back for the
key it already used. What a run is handed is only the id of a decision the app stored under the identity
it verified: a resume typed into Prefect's UI or API cannot decide anything.

`routine(ad, run, reference)` is engine-neutral: `PrefectRun` runs its steps as Prefect task runs and
suspends the flow run; flows/inprocess.py runs the same routine without Prefect, for unit tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from prefect import Flow, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.flow_runs import asuspend_flow_run
from prefect.input import RunInput
from prefect.states import Cancelled
from pydantic import ConfigDict

from flows.bootstrap import passed, process_adapters
from models.routine import HUMAN_STAGES, ORDER_TYPES, STAGES, OrderType, Stage, suspend_key
from models.status import OrderStatus
from tasks.adapters import Adapters, failpoints
from tasks.adapters.gateway import GatewayUnavailable
from tasks.steps import notifications, orders, paper_fallback, stages

T = TypeVar("T")
log = logging.getLogger(__name__)

# A suspension has to end some time in Prefect; the SLA monitor, not this timeout, chases late decisions.
# Should it still expire, the reconciler starts a new run that continues from the database state.
SUSPEND_TIMEOUT_S = 60 * 60 * 24 * 60
CONFIRM_RETRY_DELAYS = (2.0, 2.0)


class DecisionInput(RunInput):
    """What a suspended run is handed: the id of a decision stored by the app, nothing else. Anything else a
    resume carries (a decider, an outcome typed into Prefect's UI or API) is accepted by the schema and then
    ignored, so the run itself can refuse and audit the attempt instead of Prefect rejecting it unseen."""
    model_config = ConfigDict(extra="ignore")

    decision_id: int | None = None


DECISION_HELP = ("Beslut fattas i appen, inte här: {title} registreras på beställningens sida eller i "
                 "arbetskön, där den som beslutar är inloggad. Ett beslut som skrivs in här godtas inte.")
INPUTS: dict[Stage, type[DecisionInput]] = {
    s: DecisionInput.with_initial_data(description=DECISION_HELP.format(title=d.title_sv.lower()))
    for s, d in STAGES.items()}


class Run(Protocol):
    """How the routine's steps run and how it waits for a person."""

    async def step(self, name: str, fn: Callable[..., T], ad: Adapters, *args: Any, retries: int = 0,
                   retry_delays: Sequence[float] = ()) -> T: ...

    async def wait(self, stage: Stage, key: str) -> int | None:
        """Wait for the decision on `stage`; returns the stored decision's id from the run input."""
        ...

    def cancelled(self) -> Any:
        """What the run returns when its order was cancelled."""
        ...

    def logger(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]: ...


# --- the routine ----------------------------------------------------------------------------------------

async def routine(ad: Adapters, run: Run, reference: str) -> Any:
    # A resumed run re-runs from the top: receiving is a step (a task run) only in the segment that does it,
    # not one per segment (each task run costs about 75 ms of CPU on worker and server: docs/engine.md).
    if not_received(ad, reference):
        await run.step("receive-order", stages.receive, ad, reference)
    failpoints.hit("after-receive", reference)
    for stage in HUMAN_STAGES:
        if not await human_step(ad, run, reference, stage):
            break  # the order ended (rejected, cancelled): nothing more to do but confirm
    else:
        await execution(ad, run, reference)
    return await confirmation(ad, run, reference)


def not_received(ad: Adapters, reference: str) -> bool:
    """Whether `stages.receive` has anything to do (it checks the same again, under its own lock)."""
    with ad.db.session() as s:
        return orders.get(s, reference).status in (OrderStatus.SUBMITTED, OrderStatus.PAPER_FALLBACK)


async def human_step(ad: Adapters, run: Run, reference: str, stage: Stage) -> bool:
    """Wait for a person's decision on `stage`. False when the order ended instead (rejected, cancelled)."""
    while True:
        st = stages.stage_state(ad, reference, stage)
        if st.state == "closed":
            return False
        if st.state == "done":
            return True
        if st.proposed is not None:
            # The app stored a decision before this run reached the stage: take it without waiting.
            await run.step("record-decision", stages.record_decision, ad, reference, stage.value, st.proposed)
            failpoints.hit(f"after-decision:{stage}", reference)
            continue
        # The dashboard's card, once per step, now that the order waits (the card never delays a status).
        stages.publish_timeline(ad, reference)
        # Tell the people who may decide it (urgent: at once; non-urgent: their next digest). Never fails the run.
        notifications.announce_safely(ad, reference, stage.value)
        run.logger().info("%s waits for %s (attempt %s)", reference, stage.value, st.attempt)
        try:
            decision_id = await run.wait(stage, suspend_key(stage, st.attempt))
        except RuntimeError:
            # "Run is already in terminal state CANCELLED": the order was cancelled (and its run with it)
            # between the check above and the suspension. The run ends as cancelled, not as a failure.
            if stages.stage_state(ad, reference, stage).state == "closed":
                return False
            raise
        await run.step("record-decision", stages.record_decision, ad, reference, stage.value, decision_id)
        failpoints.hit(f"after-decision:{stage}", reference)


async def execution(ad: Adapters, run: Run, reference: str) -> None:
    """Through the gateway: at once with the simulated registry, or wait for the account administrator.
    When the execution system stays down after bounded retries: the paper routine (reservrutin)."""
    try:
        result = await run.step("execute-order", stages.execute, ad, reference,
                                retries=len(ad.settings.execute_retry_delays),
                                retry_delays=ad.settings.execute_retry_delays)
    except GatewayUnavailable:
        if await run.step("fall-back-to-paper", stages.fall_back_to_paper, ad, reference) == "manual":
            await human_step(ad, run, reference, Stage.EXECUTION)  # its signed paper form is already here
            return
        try:  # paper form checked and orderer told; a failure must not fail the run: the sweep repeats it
            await run.step("paper-fallback", paper_fallback.check_and_tell, ad, reference, retries=2,
                           retry_delays=(2.0, 2.0))
        except Exception as exc:
            run.logger().warning("%s: paper fallback step did not complete: %s", reference, type(exc).__name__)
        return
    failpoints.hit("after-execute", reference)
    if result == "manual":
        await human_step(ad, run, reference, Stage.EXECUTION)


async def confirmation(ad: Adapters, run: Run, reference: str) -> Any:
    failpoints.hit("after-confirm", reference)
    status = await run.step("send-confirmations", stages.confirm, ad, reference, retries=len(CONFIRM_RETRY_DELAYS),
                            retry_delays=CONFIRM_RETRY_DELAYS)
    stages.publish_timeline(ad, reference)
    if status == OrderStatus.CANCELLED:
        # Cancelling the order cancels its run, but a cancel that lands while the run is between two steps
        # would be overwritten by the run's own Completed (Prefect lets a run leave Cancelled): end it so.
        return run.cancelled()
    return status


# --- on Prefect -----------------------------------------------------------------------------------------

class PrefectRun:
    """Steps as Prefect task runs (the ones a person reading the run needs to see), suspensions as
    Prefect suspensions with a run input."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, int], Any] = {}

    async def step(self, name: str, fn: Callable[..., T], ad: Adapters, *args: Any, retries: int = 0,
                   retry_delays: Sequence[float] = ()) -> T:
        key = (name, retries)
        t = self._tasks.get(key)
        if t is None:
            t = self._tasks[key] = task(name=name, retries=retries, retry_delay_seconds=list(retry_delays) or 0,
                                        persist_result=False, cache_policy=NO_CACHE)(fn)
        return t(passed(ad), *args)  # type: ignore[no-any-return,return-value]

    async def wait(self, stage: Stage, key: str) -> int | None:
        decision = await asuspend_flow_run(wait_for_input=INPUTS[stage], key=key, timeout=SUSPEND_TIMEOUT_S)
        return decision.decision_id

    def cancelled(self) -> Any:
        return Cancelled(message="order cancelled")

    def logger(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        try:
            return get_run_logger()
        except MissingContextError:
            return log


def _order_flow(t: OrderType) -> Flow[[str], Any]:
    async def run_order(reference: str) -> Any:
        return await routine(process_adapters(), PrefectRun(), reference)

    # The module attribute's name: Prefect finds a served flow again by its entrypoint, flows/order.py:<name>.
    run_order.__name__ = run_order.__qualname__ = t.code
    return flow(name=t.flow_name, flow_run_name="{reference}", description=t.description_sv, persist_result=False,
                log_prints=False)(run_order)


seal_or_lock = _order_flow(ORDER_TYPES["seal_or_lock"])
restore_access = _order_flow(ORDER_TYPES["restore_access"])
block_guardian = _order_flow(ORDER_TYPES["block_guardian"])
minor_access = _order_flow(ORDER_TYPES["minor_access"])
ORDER_FLOWS: dict[str, Flow[[str], Any]] = {"seal_or_lock": seal_or_lock, "restore_access": restore_access,
                                           "block_guardian": block_guardian, "minor_access": minor_access}
