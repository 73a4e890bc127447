"""`GET /healthz`: the orders database, the engine (Prefect's API), the SMTP server and the outbox."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy import text

from forms.deps import adapters
from tasks.adapters import Adapters


class ComponentHealth(BaseModel):
    ok: bool
    detail: str = ""


class HealthResponse(BaseModel):
    status: str  # ok | degraded
    database: ComponentHealth
    prefect: ComponentHealth
    smtp: ComponentHealth
    outbox: ComponentHealth  # emails not yet accepted by the SMTP server (they are retried until they are)
    # The audit log's hash chain as last verified (`audit verify`, the hourly `audit-verify` flow): not ok
    # when that verification found the chain broken.
    audit: ComponentHealth
    # Order runs: not ok while a stored decision has not moved its order for `stalled_decision_seconds`; the
    # detail also counts the runs crashed in the last hour because nobody executed them (they are replaced).
    runs: ComponentHealth


router = APIRouter(tags=["health"])


def _database(ad: Adapters) -> ComponentHealth:
    try:
        with ad.db.session() as s:
            s.execute(text("SELECT 1"))
        return ComponentHealth(ok=True)
    except Exception as exc:
        return ComponentHealth(ok=False, detail=type(exc).__name__)


async def _engine(ad: Adapters) -> ComponentHealth:
    ok, detail = await ad.engine.health()
    return ComponentHealth(ok=ok, detail=detail)


async def _smtp(ad: Adapters) -> ComponentHealth:
    smtp = ad.mail.smtp
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(smtp.host, smtp.port), 2.0)
        banner = await asyncio.wait_for(reader.readline(), 2.0)
        writer.write(b"QUIT\r\n")
        writer.close()
        return ComponentHealth(ok=banner.startswith(b"220"), detail=banner[:3].decode(errors="replace"))
    except (OSError, TimeoutError) as exc:
        return ComponentHealth(ok=False, detail=type(exc).__name__)


def _outbox(ad: Adapters) -> ComponentHealth:
    try:
        waiting, oldest = ad.mail.backlog()
    except Exception as exc:
        return ComponentHealth(ok=False, detail=type(exc).__name__)
    if not waiting:
        return ComponentHealth(ok=True, detail="0 väntar")
    return ComponentHealth(ok=oldest < ad.settings.outbox_alarm_minutes,
                           detail=f"{waiting} väntar, äldsta {oldest:.0f} min")


def _audit_chain(ad: Adapters) -> ComponentHealth:
    from tasks.adapters.audit_chain import latest
    try:
        v = latest(ad.db)
    except Exception as exc:
        return ComponentHealth(ok=False, detail=type(exc).__name__)
    if v is None:
        return ComponentHealth(ok=True, detail="inte verifierad än")
    when = v.at.isoformat(timespec="seconds")
    if v.ok:
        return ComponentHealth(ok=True, detail=f"hel, {v.rows} rader, verifierad {when}")
    return ComponentHealth(ok=False, detail=f"BRUTEN vid rad id {v.row_id} ({v.problem}), verifierad {when}")


def _runs(ad: Adapters) -> ComponentHealth:
    from datetime import timedelta

    from tasks.steps.runs import stalled_decisions, stuck_runs_crashed_since
    try:
        now = ad.now()
        stalled = stalled_decisions(ad, now)
        crashed = stuck_runs_crashed_since(ad, now - timedelta(hours=1))
    except Exception as exc:
        return ComponentHealth(ok=False, detail=type(exc).__name__)
    detail = f"{crashed} fastnade körningar ersatta senaste timmen"
    if stalled:
        oldest = max(x.waited_seconds for x in stalled)
        refs = ", ".join(x.reference for x in stalled[:5])
        return ComponentHealth(ok=False, detail=f"{len(stalled)} beslut har inte flyttat beställningen på "
                                                f"{oldest / 60:.0f} min ({refs}); {detail}")
    return ComponentHealth(ok=True, detail=detail)


@router.get("/healthz", response_model=HealthResponse,
            summary="Databas, Prefect API, SMTP, e-postkö och granskningsloggens kedja")
async def healthz(ad: Adapters = Depends(adapters)) -> HealthResponse:
    db, pf, mail, queue, chain, runs = await asyncio.gather(
        run_in_threadpool(_database, ad), _engine(ad), _smtp(ad), run_in_threadpool(_outbox, ad),
        run_in_threadpool(_audit_chain, ad), run_in_threadpool(_runs, ad))
    ok = db.ok and pf.ok and mail.ok and queue.ok and chain.ok and runs.ok
    return HealthResponse(status="ok" if ok else "degraded", database=db, prefect=pf, smtp=mail, outbox=queue,
                          audit=chain, runs=runs)
