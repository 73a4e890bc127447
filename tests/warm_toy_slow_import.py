"""A flow module whose import takes a minute, for tests/test_warm_worker.py: a warm worker started with
--no-preload imports it on the run's thread after claiming the run (Pending) and before the engine starts
it, which holds the run in the claimed-but-not-started window long enough to SIGKILL the worker there."""

from __future__ import annotations

import os
import time

from prefect import flow

from tests.warm_toy_flows import mark

mark("import", "importing")
time.sleep(float(os.environ.get("WARM_TOY_IMPORT_SECONDS", "60")))


@flow(name="toy-slow-import", persist_result=False)
async def toy_slow_import(ref: str) -> str:
    mark(ref, "code")
    return ref
