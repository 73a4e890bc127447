"""The routine every order type follows, step by step. Each order-type module reads it top to bottom.

A human step suspends the run (no process is held while people decide, for days if need be). The key
of each suspension is the stage plus the number of refused decisions, so a refused decision leaves
the order waiting under a fresh key, and a resumed run that re-runs from the top gets the stored
input back for the key it already used.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.flow_runs import asuspend_flow_run
from prefect.states import Cancelled, State

from flows.inputs import INPUTS
from models.status import OrderStatus
from tasks import failpoints, stages
from tasks.gateway import GatewayUnavailable

# A suspension has to end some time in Prefect; the SLA monitor, not this timeout, chases late decisions.
# Should it still expire, the reconciler starts a new run that continues from the database state.
SUSPEND_TIMEOUT_S = 60 * 60 * 24 * 60


async def receive(reference: str) -> str:
    status = stages.receive(reference)
    failpoints.hit("after-receive", reference)
    return status


async def human_step(reference: str, stage: str) -> bool:
    """Wait for a person's decision on `stage`. False when the order ended instead (rejected, cancelled)."""
    while True:
        st = stages.stage_state(reference, stage)
        if st.state == "closed":
            return False
        if st.state == "done":
            return True
        if st.proposed is not None:
            # The app stored a decision before this run reached the stage: take it without waiting.
            stages.record_decision(reference, stage, {"decision_id": st.proposed}, "app")
            failpoints.hit(f"after-decision:{stage}", reference)
            continue
        # The dashboard's card, once per step: right after the order was received or a decision recorded
        # (refused ones too), now that it waits. A resumed segment re-runs receive() but publishes only here,
        # after the status has moved on, so the card never delays the next status.
        stages.publish_timeline(reference)
        get_run_logger().info("%s waits for %s (attempt %s)", reference, stage, st.attempt)
        try:
            decision = await asuspend_flow_run(wait_for_input=INPUTS[stage],
                                              key=f"{stage.replace('_', '-')}-{st.attempt}", timeout=SUSPEND_TIMEOUT_S)
        except RuntimeError:
            # "Run is already in terminal state CANCELLED": the order was cancelled (and its run with it)
            # between the check above and the suspension. The run ends as cancelled, not as a failure.
            if stages.stage_state(reference, stage).state == "closed":
                return False
            raise
        stages.record_decision(reference, stage, decision.model_dump(exclude={"metadata"}),
                               "app" if decision.decision_id else "prefect-ui")
        failpoints.hit(f"after-decision:{stage}", reference)


async def execution(reference: str) -> None:
    """Through the gateway: at once with the simulated registry, or wait for the account administrator."""
    try:
        result = stages.execute(reference)
    except GatewayUnavailable:
        if stages.fall_back_to_paper(reference) == "manual":  # its signed paper form is already here
            await human_step(reference, "execution")
            return
        # Imported here: a resumed run's process starts faster without the paper machinery it rarely needs.
        from flows.fallback import paper_fallback
        # Paper form checked and orderer told (flows/fallback.py). Its failure must not fail this run: the
        # order is safely in paper_fallback, and the paper-fallback sweep repeats the step.
        state = await paper_fallback(reference, return_state=True)
        if not state.is_completed():
            get_run_logger().warning("%s: paper fallback step did not complete: %s", reference, state.type)
        return
    failpoints.hit("after-execute", reference)
    if result == "manual":
        await human_step(reference, "execution")


async def confirmation(reference: str) -> str | State[Any]:
    failpoints.hit("after-confirm", reference)
    status = stages.confirm(reference)
    stages.publish_timeline(reference)
    if status == OrderStatus.CANCELLED:
        # Cancelling the order cancels its run, but a cancel that lands while the run is between two steps
        # would be overwritten by the run's own Completed (Prefect lets a run leave Cancelled): end it so.
        return Cancelled(message="order cancelled")
    return status
