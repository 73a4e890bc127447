"""When an open order whose run has ended gets a new run: the reconciler's restart policy. Pure, no I/O.

A run ends while its order is still open when its process died, its suspension expired or someone stopped
it in the Prefect UI; a new run continues from the orders database. A run that fails every time would
otherwise get a new run every housekeeping round, forever. So restarts are counted since the order last
moved (a status change: a restart that got further is not the same failure again), each one waits longer
than the one before, and after `max_restarts` the order is given up (status `failed`, people are told).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class RestartVerdict(StrEnum):
    RESTART = "restart"
    WAIT = "wait"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class RunHistory:
    """What the audit log says about an order's runs."""
    restarts_since_progress: int      # runs started after the first, since the last status change
    last_started_at: datetime | None  # when its latest run was started


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    first_delay: timedelta = timedelta(seconds=10)

    def delay(self, restarts_so_far: int) -> timedelta:
        """How long after the latest start the next restart may come: at once the first time (a crash is
        usually a one-off), then doubling, so each restart comes later than the one before."""
        if restarts_so_far <= 0:
            return timedelta(0)
        return self.first_delay * (2 ** (restarts_so_far - 1))

    def verdict(self, history: RunHistory, now: datetime) -> RestartVerdict:
        if history.restarts_since_progress >= self.max_restarts:
            return RestartVerdict.GIVE_UP
        if (history.last_started_at is not None
                and now < history.last_started_at + self.delay(history.restarts_since_progress)):
            return RestartVerdict.WAIT
        return RestartVerdict.RESTART


# Runs replaced on purpose, not because the previous one ended: they do not count as restarts.
DELIBERATE = frozenset({"urgent_queue"})


def history_from_audit(rows: list[tuple[str, str | None, datetime, dict[str, object] | None]]) -> RunHistory:
    """`rows`: the order's audit rows (action, to_status, at, detail) in the order they were written."""
    restarts = 0
    last: datetime | None = None
    for action, to_status, at, detail in rows:
        if to_status is not None:
            restarts = 0
        if action == "run_started":
            last = at
            if (detail or {}).get("restart") and (detail or {}).get("reason") not in DELIBERATE:
                restarts += 1
    return RunHistory(restarts, last)
