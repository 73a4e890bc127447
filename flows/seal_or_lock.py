"""Försegling och/eller låsning: seal the 1177 journal, lock the 1177 login, or both.

The routine: receive → (urgent: callback) → harm assessment → approval → execution → confirmation emails.
Stages the rules do not require are recorded as not required, with the rule, and pass straight through.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import State

from flows.routine import confirmation, execution, human_step, receive


@flow(name="seal-or-lock", flow_run_name="{reference}", persist_result=False, log_prints=False)
async def seal_or_lock(reference: str) -> str | State[Any]:
    await receive(reference)
    if (await human_step(reference, "callback")
            and await human_step(reference, "harm_assessment")
            and await human_step(reference, "approval")):
        await execution(reference)
    return await confirmation(reference)
