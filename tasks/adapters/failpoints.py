"""Fault injection for the crash tests (a failpoint, as in etcd or TiKV): with `RO_FAILPOINTS=after-execute`
the serving process and its flow runs die together (SIGKILL to the process group, as when the machine
loses power) the first time an armed order passes that point. Inert unless the variable is set; it is
never set outside tests.

Points (each a single `hit(...)` line where it is):
- `after-receive`                stages planned, first stage open (flows/order.py)
- `after-decision:<stage>`       a decision recorded: `callback`, `harm_assessment`, `approval`, `execution`
                                 (flows/order.py); `after-decision` names all four
- `after-execute`                the 1177 change made (flows/order.py)
- `after-confirm`                final status set and its emails queued, nothing delivered yet (flows/order.py)
- `after-claim`                  a warm worker claimed the order's run, before it starts it (warm_worker.py)
- `after-smtp-accept`            the SMTP server accepted a message, the outbox not yet told (tasks/adapters/mail.py)

In `RO_FAILPOINT_DIR` a file `<reference>.armed` arms an order (other orders in flight pass untouched); when
the file lists point names (one per line), only those fire for it. A marker per point and order makes
each order crash once per point.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _named(point: str, names: list[str]) -> bool:
    return point in names or point.split(":", 1)[0] in names


def hit(point: str, reference: str | None) -> None:
    wanted = os.environ.get("RO_FAILPOINTS", "")
    if not wanted or not reference or not _named(point, wanted.split(",")):
        return
    folder = Path(os.environ.get("RO_FAILPOINT_DIR", "."))
    armed = folder / f"{reference}.armed"
    try:
        only = armed.read_text().split()
    except FileNotFoundError:
        return
    if only and not _named(point, only):
        return
    marker = folder / f"{point}-{reference}"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    os.killpg(os.getpgrp(), signal.SIGKILL)
