"""`GET /api/queues/{stage}`: a work queue as JSON, the same rows in the same order as the page /ko/<slug>
(forms/pages/queues.py): urgent first, then by deadline, then the oldest; only the orders the caller may
decide (an order they may not decide for four eyes is on the page, with the reason, but not here).

403 for a role that never decides the stage (models/routine.py's deciders); 404 for an unknown stage.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from forms.auth import User, require_roles, require_user
from forms.deps import adapters, now
from forms.errors import ApiError
from forms.pages.queues import QueueFilter, queue_items
from models.routine import STAGES, Stage
from models.schemas import ErrorResponse
from tasks.adapters import Adapters

router = APIRouter(prefix="/api", tags=["queues"], responses={
    401: {"model": ErrorResponse, "description": "Ingen identitet"},
    403: {"model": ErrorResponse, "description": "En roll som aldrig beslutar steget"},
    404: {"model": ErrorResponse, "description": "Okänt steg"}})


def _rows(ad: Adapters, user: User, stage: Stage, at: datetime, flt: QueueFilter) -> list[dict[str, Any]]:
    items = queue_items(ad, user, STAGES[stage], at, flt, via="api_queue")
    rows = []
    for it in items:
        if it.blocked:
            continue  # not the caller's decision (four eyes)
        row = it.as_json()
        if stage == Stage.CALLBACK:
            row["callback_phone"] = it.order.callback_phone  # the number to call: staff data, not the patient's
        rows.append(row)
    return rows


@router.get("/queues/{stage}", summary="Arbetskö: beställningar som väntar på ditt beslut")
async def queue(stage: str, unit: str = Query("", description="Endast en vårdenhets (HSA-id)"),
                order_type: str = Query("", alias="type", description="Endast en beställningstyp"),
                user: User = Depends(require_user), at: datetime = Depends(now),
                ad: Adapters = Depends(adapters)) -> dict[str, list[dict[str, Any]]]:
    if stage not in Stage.__members__.values():
        raise ApiError(404, "not_found", "Okänt steg. Tillåtna värden: " + ", ".join(s.value for s in Stage) + ".")
    sd = STAGES[Stage(stage)]
    require_roles(user, *sd.roles)
    rows = await run_in_threadpool(_rows, ad, user, sd.stage, at, QueueFilter.of(unit, order_type))
    return {"orders": rows}
