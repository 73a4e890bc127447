"""Waiting for an order to reach a status, however the status is read (database or API)."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll_status(read: Callable[[], str], reference: str, wanted: tuple[str, ...], timeout: float,
                every: float) -> str:
    deadline = time.monotonic() + timeout
    st = ""
    while time.monotonic() < deadline:
        st = read()
        if st in wanted:
            return st
        time.sleep(every)
    raise AssertionError(f"{reference} is {st}, wanted {wanted}")
