"""The routine every order type follows, step by step. Each order-type module reads it top to bottom.

A human step suspends the run (no process is held while people decide, for days if need be). The key
of each suspension is the stage plus the number of refused decisions, so a refused decision leaves
the order waiting under a fresh key, and a resumed run that re-runs from the top gets the stored
input back for the key it already used.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.flow_runs import asuspend_flow_run

from flows.fallback import paper_fallback
from flows.inputs import INPUTS
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
        get_run_logger().info("%s waits for %s (attempt %s)", reference, stage, st.attempt)
        decision = await asuspend_flow_run(wait_for_input=INPUTS[stage], key=f"{stage.replace('_', '-')}-{st.attempt}",
                                          timeout=SUSPEND_TIMEOUT_S)
        stages.record_decision(reference, stage, decision.model_dump(exclude={"metadata"}),
                               "app" if decision.decision_id else "prefect-ui")
        failpoints.hit(f"after-decision:{stage}", reference)


async def execution(reference: str) -> None:
    """Through the gateway: at once with the simulated registry, or wait for the account administrator."""
    try:
        result = stages.execute(reference)
    except GatewayUnavailable:
        stages.fall_back_to_paper(reference)
        # Paper form checked and orderer told (flows/fallback.py). Its failure must not fail this run: the
        # order is safely in paper_fallback, and the paper-fallback sweep repeats the step.
        state = await paper_fallback(reference, return_state=True)
        if not state.is_completed():
            get_run_logger().warning("%s: paper fallback step did not complete: %s", reference, state.type)
        return
    failpoints.hit("after-execute", reference)
    if result == "manual":
        await human_step(reference, "execution")


async def confirmation(reference: str) -> str:
    failpoints.hit("after-confirm", reference)
    status = stages.confirm(reference)
    stages.publish_timeline(reference)
    return status
