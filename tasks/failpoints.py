"""Fault injection for the crash tests (a failpoint, as in etcd or TiKV): with `RO_FAILPOINTS=after-execute`
the serving process and its flow runs die together (SIGKILL to the process group, as when the machine
loses power) the first time an armed order passes that point. Inert unless the variable is set; it is
never set outside tests. In `RO_FAILPOINT_DIR` a file `<reference>.armed` arms an order (other orders in
flight pass untouched) and a marker per point and order makes each order crash once per point.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def hit(point: str, reference: str) -> None:
    wanted = os.environ.get("RO_FAILPOINTS", "")
    if not wanted or point not in wanted.split(","):
        return
    folder = Path(os.environ.get("RO_FAILPOINT_DIR", "."))
    if not (folder / f"{reference}.armed").exists():
        return
    marker = folder / f"{point}-{reference}"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    os.killpg(os.getpgrp(), signal.SIGKILL)
