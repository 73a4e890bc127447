"""The base of the tests' fake engines (tasks/adapters/engine.py's `Engine`, handed to the composition root):
every run is created and suspended, nothing else happens. A test's fake overrides what it records."""

from __future__ import annotations

import uuid
from collections.abc import Coroutine
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from tasks.adapters.engine import RunInfo


class StubEngine:
    name = "stub"

    async def create_run(self, flow_name: str, reference: str, *, key: str, tags: list[str],
                         work_queue: str | None) -> str:
        return str(uuid.uuid4())

    async def begin(self, run_id: str) -> None:
        return None

    async def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        await coro

    async def work_queue_for(self, flow_name: str, urgent: bool) -> str | None:
        return None

    async def resume(self, run_id: str, run_input: dict[str, Any]) -> bool:
        return False

    async def set_state(self, run_id: str, state: str, message: str) -> None:
        return None

    async def read_run(self, run_id: str) -> RunInfo:
        return (await self.read_runs([run_id]))[run_id]

    async def read_runs(self, run_ids: list[str]) -> dict[str, RunInfo]:
        return {r: RunInfo(r, "paused", "Suspended") for r in run_ids}

    async def add_tag(self, run_id: str, tag: str) -> None:
        return None

    def fails_fast(self, timeout: float = 10.0) -> AbstractContextManager[Any]:
        return nullcontext()

    def publish_card(self, key: str, markdown: str, description: str, run_id: str | None) -> None:
        return None

    async def health(self) -> tuple[bool, str]:
        return True, self.name
