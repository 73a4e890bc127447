"""Återställande av direktåtkomst: lift a seal and/or a lock.

The routine: receive → (urgent: callback) → harm assessment → approval → execution → confirmation emails.
Stages the rules do not require are recorded as not required, with the rule, and pass straight through.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import State

from flows.routine import confirmation, execution, human_step, receive


@flow(name="restore-access", flow_run_name="{reference}", persist_result=False, log_prints=False)
async def restore_access(reference: str) -> str | State[Any]:
    await receive(reference)
    if (await human_step(reference, "callback")
            and await human_step(reference, "harm_assessment")
            and await human_step(reference, "approval")):
        await execution(reference)
    return await confirmation(reference)
