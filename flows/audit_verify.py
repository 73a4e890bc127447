"""The scheduled verification of the audit log's hash chain (`audit-verify`, hourly).

Each run walks the whole chain (tasks/adapters/audit_chain.py), stores the outcome in the orders database (the admin
overview and /healthz show the latest) and emits a Prefect event on resource `restriction-orders.audit-chain`:

- `audit.chain.broken` when a row was changed, removed or slipped in: the payload names the first broken row
  (id, position, problem code) and how many problems there are; the shipped automation *Audit chain broken*
  (tasks/adapters/automations_monitoring.py) fires on it;
- `audit.chain.verified` otherwise, with the head's position and hash: a copy of the head outside the orders
  database, so a later rewrite of the whole chain can be told from this record too.

Only ids, positions, codes and hashes reach Prefect (payloads, logs, the run's result): never row content.
A broken chain does not fail the run (the event and its automation are the alarm, once); a run that cannot
read the database fails, which the automation *Monitoring run failed* reports.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.bootstrap import passed, process_adapters
from models.audit_chain import EVENT_BROKEN, EVENT_VERIFIED, RESOURCE_ID
from tasks.adapters import Adapters, audit_chain

RESOURCE = {"prefect.resource.id": RESOURCE_ID, "prefect.resource.name": "audit_log"}


def summary(report: audit_chain.Report) -> dict[str, Any]:
    first = report.first
    return {"ok": report.ok, "rows": report.rows, "head_seq": report.last_seq, "head_hash": report.last_hash,
            "problems": report.problem_count, "problem": first.code if first else None,
            "row_id": first.row_id if first else None, "row_seq": first.seq if first else None,
            "back_dated": len(report.warnings)}


@task(name="verify-audit-chain", persist_result=False, cache_policy=NO_CACHE)
def verify_chain(ad: Adapters) -> dict[str, Any]:
    return summary(audit_chain.verify(ad.db, by="flow:audit-verify"))


@flow(name="audit-verify", persist_result=False, log_prints=False)
def audit_verify() -> dict[str, Any]:
    ad = process_adapters()
    out = verify_chain(passed(ad))
    log = get_run_logger()
    if out["ok"]:
        ad.events.emit(EVENT_VERIFIED, RESOURCE,
                       payload={k: out[k] for k in ("rows", "head_seq", "head_hash", "back_dated")})
        log.info("audit chain intact: %d rows, head at position %d", out["rows"], out["head_seq"])
    else:
        ad.events.emit(EVENT_BROKEN, RESOURCE,
                       payload={k: out[k] for k in ("rows", "problems", "problem", "row_id", "row_seq")})
        log.error("audit chain BROKEN at row id %s (position %s): %s; %d problems",
                  out["row_id"], out["row_seq"], out["problem"], out["problems"])
    return out
