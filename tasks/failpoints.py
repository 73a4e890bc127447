"""Fault injection for the crash tests (a failpoint, as in etcd or TiKV): with `RO_FAILPOINTS=after-execute`
the serving process and its flow runs die together (SIGKILL to the process group, as when the machine
loses power) the first time an order passes that point. Inert unless the variable is set; it is never set
outside tests. `RO_FAILPOINT_DIR` keeps a marker per point and order, so each order crashes once per point.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def hit(point: str, reference: str) -> None:
    wanted = os.environ.get("RO_FAILPOINTS", "")
    if not wanted or point not in wanted.split(","):
        return
    marker = Path(os.environ.get("RO_FAILPOINT_DIR", ".")) / f"{point}-{reference}"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    os.killpg(os.getpgrp(), signal.SIGKILL)
