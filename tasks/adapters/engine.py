"""The order runs' engine: Prefect, behind a small interface the routine's steps use.

The steps (tasks/steps/runs.py) decide *which* run an order needs and record it in the orders database;
this adapter only talks to the engine: create a flow run with an idempotency key, resume a suspended run
with a decision's reference, set a run's state, read runs. `PrefectEngine` is the real one; the
composition root can build an in-process engine instead (flows/inprocess.py) for the routine's unit tests.

Everything the Prefect engine remembers (its client's TLS context, its fail-fast settings, deployments'
work pools) is per instance, made once per process by the composition root.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

URGENT_TAG = "urgent"
# prefect.yaml's queue for urgent work in the `restriction-orders` work pool (created with priority 1,
# README "Production layout"); the order flows' own queue is `orders`.
URGENT_QUEUE = "urgent"
PREFECT_PAGE = 200  # the most flow runs Prefect's API returns per request by default


class NotResumable(RuntimeError):
    """The engine refuses to resume this run (e.g. its process died while suspending: no input schema)."""


@dataclass(frozen=True)
class RunInfo:
    """What the steps need to know about a run: Prefect's state type, in lower case."""
    id: str
    state: str            # scheduled | pending | running | paused | completed | failed | crashed | cancelled | cancelling
    state_name: str = ""
    work_queue_name: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def paused(self) -> bool:
        return self.state == "paused"

    @property
    def scheduled(self) -> bool:
        return self.state == "scheduled"

    @property
    def final(self) -> bool:
        return self.state in ("completed", "failed", "crashed", "cancelled")


class Engine(Protocol):
    """Runs orders' flows. Every method but `fails_fast` may raise when the engine cannot be reached."""

    async def create_run(self, flow_name: str, reference: str, *, key: str, tags: list[str],
                         work_queue: str | None) -> str:
        """A run of the order's flow, named by its reference, with the reference as its only parameter;
        the same `key` gives the same run. Returns its id."""
        ...

    async def begin(self, run_id: str) -> None:
        """After the run is recorded on the order: Prefect's workers pick it up themselves; an in-process
        engine runs it now."""
        ...

    async def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Start engine work beside the caller, who answers at once (an in-process engine does it now)."""
        ...

    async def work_queue_for(self, flow_name: str, urgent: bool) -> str | None:
        """The urgent queue for an urgent order on a work-pool deployment; None otherwise."""
        ...

    async def resume(self, run_id: str, run_input: dict[str, Any]) -> bool:
        """Hand a decision to a suspended run. False when it was not waiting; NotResumable when it never can."""
        ...

    async def set_state(self, run_id: str, state: str, message: str) -> None:
        """Force a run to `crashed` or `cancelled`."""
        ...

    async def read_run(self, run_id: str) -> RunInfo:
        ...

    async def read_runs(self, run_ids: list[str]) -> dict[str, RunInfo]:
        ...

    async def add_tag(self, run_id: str, tag: str) -> None:
        ...

    def fails_fast(self, timeout: float = 10.0) -> AbstractContextManager[Any]:
        """One try and a short timeout per call made inside: for calls a person waits on, and for loops."""
        ...

    def publish_card(self, key: str, markdown: str, description: str, run_id: str | None) -> None:
        """A new version of an order's card in the dashboard (no personal data), linked to its run."""
        ...

    async def health(self) -> tuple[bool, str]:
        """Whether the engine answers now, and a short detail for /healthz."""
        ...


def deployment_name(flow_name: str) -> str:
    return f"{flow_name}/{flow_name}"


class PrefectEngine:
    """Order runs on a Prefect server (PREFECT_API_URL): served flows (embedded) or work-pool deployments."""

    POOL_CACHE_S = 60.0

    def __init__(self) -> None:
        # Kept referenced until done: an asyncio task nobody references can be collected before it finishes.
        self._background: set[asyncio.Task[Any]] = set()
        self._fail_fast: dict[float, tuple[Any, Any]] = {}
        self._tls: dict[tuple[str | None, bool], ssl.SSLContext] = {}
        self._pool_of: dict[str, tuple[float, str | None]] = {}

    # --- the client ---------------------------------------------------------------------------------------

    @contextmanager
    def _fails_fast(self, timeout: float) -> Iterator[None]:
        import prefect.context
        from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES
        current = prefect.context.get_settings_context()
        cached = self._fail_fast.get(timeout)
        if cached is None or cached[0] is not current.settings:
            # Made once: building Prefect's settings reads the whole environment again, and per submit that
            # was a third of the app's CPU under load (bench/bench_submit_load.py).
            cached = (current.settings, current.settings.copy_with_update(
                updates={PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_API_REQUEST_TIMEOUT: timeout}))
            self._fail_fast[timeout] = cached
        with prefect.context.SettingsContext(profile=current.profile, settings=cached[1]):
            yield

    def fails_fast(self, timeout: float = 10.0) -> AbstractContextManager[Any]:
        """Prefect's `temporary_settings` with no retries and a short timeout, so a down or hanging Prefect
        API costs seconds instead of minutes of retries with backoff; the reconciler tries again later.
        Prefect reads these settings per request, from this context (one thread, or its asyncio tasks)."""
        return self._fails_fast(timeout)

    def client(self) -> Any:
        """Prefect's client, with its TLS context made once per engine: Prefect makes a new one per client,
        which was a fifth of the app's CPU per submit under load. Same certificate settings as Prefect's."""
        import certifi
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY
        insecure = bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value())
        cafile = None if insecure else (PREFECT_API_SSL_CERT_FILE.value() or certifi.where())
        ctx = self._tls.get((cafile, insecure))
        if ctx is None:
            ctx = self._tls[(cafile, insecure)] = ssl.create_default_context(cafile=cafile)
            if insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        return get_client(httpx_settings={"verify": ctx})

    # --- runs ---------------------------------------------------------------------------------------------

    async def work_pool_of(self, deployment: str) -> str | None:
        """The deployment's work pool; None for a served deployment (the embedded default has no pool).
        Remembered for a minute: deployments change when someone deploys, not per order."""
        hit = self._pool_of.get(deployment)
        if hit is not None and time.monotonic() - hit[0] < self.POOL_CACHE_S:
            return hit[1]
        async with self.client() as client:
            dep = await client.read_deployment_by_name(deployment)
        self._pool_of[deployment] = (time.monotonic(), dep.work_pool_name)
        return dep.work_pool_name

    async def work_queue_for(self, flow_name: str, urgent: bool) -> str | None:
        """A served deployment refuses any queue name (HTTP 400 "not associated with a work pool"), so none
        is ever passed to one."""
        if not urgent:
            return None
        return URGENT_QUEUE if await self.work_pool_of(deployment_name(flow_name)) else None

    async def create_run(self, flow_name: str, reference: str, *, key: str, tags: list[str],
                         work_queue: str | None) -> str:
        from prefect.deployments.flow_runs import arun_deployment
        async with self.client() as client:
            fr = await arun_deployment(deployment_name(flow_name), client=client, parameters={"reference": reference},
                                      timeout=0, idempotency_key=key, flow_run_name=reference, tags=tags,
                                      as_subflow=False, work_queue_name=work_queue)
        return str(fr.id)

    async def begin(self, run_id: str) -> None:
        return None  # a worker or the serving process picks it up

    async def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    SCHEMA_WAIT_S = 1.0  # how long a missing input schema may be Prefect still suspending the run

    async def resume(self, run_id: str, run_input: dict[str, Any]) -> bool:
        from prefect.exceptions import PrefectException
        from prefect.flow_runs import aresume_flow_run
        deadline = time.monotonic() + self.SCHEMA_WAIT_S
        while True:
            try:
                await aresume_flow_run(UUID(run_id), run_input=run_input)
            except RuntimeError as exc:  # refused by the server; "not paused" and timeouts raise PrefectException
                # Prefect makes a run Suspended before it saves the run's input schema (asuspend_flow_run), so a
                # decision handed over right after the suspension is refused for some milliseconds with "Run
                # input schema not found": try again for a second. Still refused: the process died in the
                # middle of suspending and the schema will never come (the run is replaced).
                if "schema not found" in str(exc).lower() and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    continue
                raise NotResumable(str(exc)) from exc
            except PrefectException:
                return False
            return True

    async def crash_stuck(self, flow_names: list[str], threshold: float) -> list[tuple[str, str, str]]:
        """End Crashed the runs of these flows that nobody executes any more (tasks/adapters/stuck_runs.py);
        returns (run name, run id, reason) for each."""
        from tasks.adapters.stuck_runs import crash_stuck_runs
        async with self.client() as client:
            crashed = await crash_stuck_runs(client, flow_names, threshold)
        return [(c.name, str(c.flow_run_id), f"{c.was}: {c.reason}") for c in crashed]

    async def set_state(self, run_id: str, state: str, message: str) -> None:
        from prefect.states import Cancelled, Crashed
        new: Any = Crashed(message=message) if state == "crashed" else Cancelled(message=message)
        async with self.client() as client:
            await client.set_flow_run_state(UUID(run_id), new, force=True)

    @staticmethod
    def _info(run: Any) -> RunInfo:
        state = run.state
        return RunInfo(str(run.id), state.type.value.lower() if state else "scheduled",
                       state.name if state else "", run.work_queue_name, tuple(run.tags or ()))

    async def read_run(self, run_id: str) -> RunInfo:
        async with self.client() as client:
            return self._info(await client.read_flow_run(UUID(run_id)))

    async def read_runs(self, run_ids: list[str]) -> dict[str, RunInfo]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        out: dict[str, RunInfo] = {}
        ids = [UUID(r) for r in run_ids]
        async with self.client() as client:
            for i in range(0, len(ids), PREFECT_PAGE):
                chunk = ids[i:i + PREFECT_PAGE]
                runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                                                   limit=len(chunk))
                out |= {str(r.id): self._info(r) for r in runs}
        return out

    async def add_tag(self, run_id: str, tag: str) -> None:
        async with self.client() as client:
            run = await client.read_flow_run(UUID(run_id))
            if tag not in (run.tags or []):
                await client.update_flow_run(run.id, tags=[*(run.tags or []), tag])

    async def health(self) -> tuple[bool, str]:
        import httpx
        from prefect.settings import get_current_settings

        from tasks.adapters.prefect_auth import basic_auth_header
        api = get_current_settings().api
        if not api.url:
            return False, "PREFECT_API_URL saknas"
        # /health answers without authentication; /admin/version needs the auth string, so a wrong or missing
        # PREFECT_API_AUTH_STRING shows here (HTTP 401) and not first when an order's run cannot start.
        secret = api.auth_string.get_secret_value() if api.auth_string else ""
        try:
            async with httpx.AsyncClient(timeout=2.0, headers=basic_auth_header(secret) if secret else {}) as client:
                r = await client.get(f"{api.url.rstrip('/')}/admin/version")
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        if r.status_code == 401:
            return False, "HTTP 401: PREFECT_API_AUTH_STRING saknas eller är fel"
        return r.status_code == 200, f"HTTP {r.status_code}"

    def publish_card(self, key: str, markdown: str, description: str, run_id: str | None) -> None:
        """A markdown artifact; inside a run it belongs to the current task run, outside one (the cancel
        command) it still belongs to the order's run."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate
        from prefect.utilities.context import get_task_and_flow_run_ids
        task_run_id, flow_run_id = get_task_and_flow_run_ids()
        with get_client(sync_client=True) as client:
            client.create_artifact(ArtifactCreate(
                key=key, type="markdown", data=markdown, description=description, task_run_id=task_run_id,
                flow_run_id=flow_run_id or (UUID(run_id) if run_id else None)))


class NoEngine:
    """For processes that never touch runs (migrations, the directory import): every call fails."""

    def fails_fast(self, timeout: float = 10.0) -> AbstractContextManager[Any]:
        return nullcontext()

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no engine configured for {name}")


def tags_for(order_type: str, region: str, channel: str, urgent: bool) -> list[str]:
    out = [f"type:{order_type}", f"region:{region}", f"channel:{channel}"]
    if urgent:
        out.append(URGENT_TAG)
    return out
