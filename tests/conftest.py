"""Real parts for the tests: a temporary orders database (SQLite, or PostgreSQL when DATABASE_URL is set,
in a schema of its own), a real Prefect server, served flows in a subprocess, and an SMTP server on loopback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tasks.adapters import Adapters
    from tasks.adapters.database import Database
    from tasks.adapters.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
_TMP = Path(tempfile.mkdtemp(prefix="ro-tests-"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_schema_url(url: str) -> str:
    """A fresh schema per test session, so runs never see each other's rows."""
    import sqlalchemy as sa
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    schema = f"t_{uuid.uuid4().hex[:10]}"
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    eng.dispose()
    os.environ["RO_TEST_PG_SCHEMA"] = schema
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def pytest_configure(config: pytest.Config) -> None:
    os.environ["RO_DATA_DIR"] = str(_TMP / "data")
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        os.environ["DATABASE_URL"] = _pg_schema_url(os.environ["DATABASE_URL"])
    os.environ["RO_SMTP_PORT"] = str(free_port())
    os.environ["RO_APP_BASE_URL"] = "http://127.0.0.1:8000"
    # The embedded demo, as `make run`: the Demo marker, and the regions' demo mailboxes (.invalid).
    os.environ.setdefault("RO_DEMO", "true")
    # The execution gateway is down while this file exists (tests/test_fallback_e2e.py creates it).
    os.environ["RO_GATEWAY_DOWN_FLAG"] = str(_TMP / "gateway-down")
    os.environ["PREFECT_HOME"] = str(_TMP / "prefect")
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{free_port()}/api"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_RUNNER_POLL_FREQUENCY"] = "1"
    # The test Prefect server is locked as the embedded default's is (tasks/adapters/prefect_auth.py): every client of
    # the session (this process, the served flows, their runs, the CLI) sends the secret, so every end-to-end
    # test goes through the locked API. The server gets it, and CORS for the app's origin, in prefect_server.
    from tasks.adapters import prefect_auth
    os.environ.update(prefect_auth.client_env(prefect_auth.ensure_secret(prefect_auth.secret_file(_TMP / "data"))))
    # INFO, as production logs: the leak scan must see what flow runs and our own code write at INFO, in
    # Prefect's database (run logs) and in every process's log file. The server's access log stays quiet.
    os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
    os.environ["PREFECT_LOGGING_SETTINGS_PATH"] = str(_logging_settings())
    os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "WARNING"
    os.environ["PREFECT_UI_ENABLED"] = "false"
    # No dispatcher thread in every app a test builds (TestClient, the live app): the served flows'
    # housekeeping dispatches, and the tests that want the app's own dispatcher turn it on.
    os.environ.setdefault("RO_APP_DISPATCH_SECONDS", "0")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _log_this_process()


PROCESS_LOG = _TMP / "pytest-process.log"
# Loggers that do not pass their records on to the root logger, so the file handler goes on them too.
_NON_PROPAGATING = ("prefect.extra", "prefect._internal", "uvicorn", "fastapi")
OWN_LOGGERS = ("restriction_orders", "tasks", "flows", "forms", "models")
# One line per HTTP request or background job: volume, not content. (The test client's own request lines
# would also show the personal numbers the hostile-input tests put in paths on purpose.)
_QUIET = ("httpx", "httpcore", "docket", "hpack", "asyncio", "aiosqlite", "hypothesis")


def _logging_settings() -> Path:
    """Prefect's logging configuration for every process of the session (PREFECT_LOGGING_SETTINGS_PATH): its
    default, with the root logger at INFO so our own modules' INFO lines are written, minus the chatter."""
    import importlib.util

    import yaml
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    config = yaml.safe_load((Path(spec.origin).parent / "logging" / "logging.yml").read_text())
    config["root"]["level"] = "INFO"
    for name in _QUIET:
        config["loggers"][name] = {"level": "WARNING"}
    from tasks.adapters.quiet_suspensions import add_to_logging_config
    add_to_logging_config(config)  # suspensions at INFO in every process, as make run and the workers have it
    path = _TMP / "logging.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _log_this_process() -> None:
    """This process hosts the app (TestClient) and runs reconciler, dispatcher and monitor code; it writes
    what it logs to _TMP/pytest-process.log for the leak scan (tests/test_zz_no_leaks.py)."""
    import prefect  # noqa: F401  Prefect configures logging on import: the handler goes on after that

    handler = logging.FileHandler(PROCESS_LOG, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    for name in _NON_PROPAGATING:
        logging.getLogger(name).addHandler(handler)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)


_SESSION: dict[str, int] = {}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _SESSION["exitstatus"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    schema = os.environ.get("RO_TEST_PG_SCHEMA")
    if schema:
        import sqlalchemy as sa
        url = os.environ["DATABASE_URL"].split("?")[0]
        eng = sa.create_engine(url)
        with eng.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        eng.dispose()
    # Every result is reported by now. A whole-suite session has died with SIGSEGV after this point, in the
    # interpreter's own shutdown (threads of Prefect's clients, the browser driver and the live app still
    # alive; cause not found): the process ends here with pytest's status instead of finalizing the
    # interpreter. RO_TEST_HARD_EXIT=0 finalizes normally (to look for the crash).
    if "exitstatus" in _SESSION and os.environ.get("RO_TEST_HARD_EXIT", "1") == "1":
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_SESSION["exitstatus"])


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The suite's settings, from the environment pytest_configure set; execution retries without waiting."""
    from tasks.adapters.settings import Settings
    return Settings().model_copy(update={"execute_retry_delays": [0.0, 0.0, 0.0]})


def migrated(database: Database, regions: Any = None, first_reference: int | None = None) -> Database:
    """Migrate and seed the demo directory; with `first_reference`, the order counters start after it (the
    SMTP sink is shared and mails are matched by reference)."""
    from models.regions import load_regions
    from models.tables import ReferenceCounter
    from tasks.adapters.demo import seed_demo
    database.migrate()
    seed_demo(database, regions if regions is not None else load_regions())
    if first_reference is not None:
        with database.session() as s:
            for year in (2026, 2027):
                if s.get(ReferenceCounter, year) is None:
                    s.add(ReferenceCounter(year=year, last=first_reference))
    return database


@pytest.fixture(scope="session")
def db(settings: Settings) -> Iterator[Database]:
    """The session's orders database, migrated and seeded with the demo directory."""
    from tasks.adapters.database import Database
    database = migrated(Database(settings.orders_db_url))
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def ad(db: Database, settings: Settings) -> Adapters:
    """The adapters with the in-process engine (flows/inprocess.py): an order's run goes as far as it can
    inside the call that starts or resumes it, without a Prefect server. Real database and SMTP."""
    from flows.bootstrap import in_process
    return in_process(settings, db=db)


def own_database(tmp_path_factory: pytest.TempPathFactory, name: str, first_reference: int) -> Iterator[Database]:
    """For a module-scoped fixture: an orders database of the module's own (a SQLite file, or a PostgreSQL
    schema of its own), migrated and seeded, for tests whose orders no other test may see."""
    import sqlalchemy as sa

    from tasks.adapters.database import Database
    url = os.environ.get("DATABASE_URL", "")
    schema = None
    if url.startswith("postgres"):
        base = url.split("?")[0]
        schema = f"t_{name}_{os.getpid()}"
        eng = sa.create_engine(base)
        with eng.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            c.execute(sa.text(f"CREATE SCHEMA {schema}"))
        eng.dispose()
        db_url = f"{base}?options=-csearch_path%3D{schema}"
    else:
        db_url = f"sqlite:///{tmp_path_factory.mktemp(f'{name}-data') / 'orders.db'}"
    database = migrated(Database(db_url), first_reference=first_reference)
    try:
        yield database
    finally:
        database.dispose()
        if schema:
            eng = sa.create_engine(url.split("?")[0])
            with eng.begin() as c:
                c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            eng.dispose()


class SmtpSink:
    """The SMTP server on loopback that every test's mail goes to; the fault tests stop and start it."""

    def __init__(self, maildir: Path, port: int) -> None:
        self.maildir, self.port = maildir, port
        self.ctl: Any = None

    def start(self) -> None:
        from tasks.adapters.smtp_sink import start_sink
        self.ctl = start_sink(self.maildir, port=self.port)

    def stop(self) -> None:
        if self.ctl is not None:
            self.ctl.stop()
            self.ctl = None


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink(_TMP / "mail", int(os.environ["RO_SMTP_PORT"]))
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def smtp(smtp_sink: SmtpSink) -> Path:
    return smtp_sink.maildir


def _wait_http(url: str, timeout: float) -> None:
    from tasks.adapters.processes import wait_http
    wait_http(url, timeout, every=0.3)


# Where the test Prefect server keeps its own database. Prefect on SQLite stalls for up to a minute with
# "database is locked" under this suite's load on two cores (Prefect issues #10188, #17473; seen in CI), so
# the suite gives Prefect a throwaway PostgreSQL database when one answers, as production does. The orders
# database is separate and follows DATABASE_URL. RO_TEST_PREFECT_DB=sqlite forces Prefect's SQLite.
PREFECT_PG_ADMIN_URL = os.environ.get("RO_TEST_PREFECT_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _prefect_pg_database() -> str | None:
    """Create an empty database (with pg_trgm, which Prefect needs) and return its asyncpg URL, or None."""
    if os.environ.get("RO_TEST_PREFECT_DB", "postgres") == "sqlite":
        return None
    import sqlalchemy as sa
    name = f"ro_prefect_{uuid.uuid4().hex[:10]}"
    try:
        eng = sa.create_engine(PREFECT_PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
        eng.dispose()
        eng = sa.create_engine(PREFECT_PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        eng.dispose()
    except sa.exc.SQLAlchemyError:
        return None
    base = PREFECT_PG_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    return f"postgresql+asyncpg://{base}/{name}"


def _drop_prefect_pg_database(url: str) -> None:
    import sqlalchemy as sa
    eng = sa.create_engine(PREFECT_PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)"))
    eng.dispose()


PREFECT_DB: dict[str, str] = {}  # "url" of the PostgreSQL database the test Prefect server uses, if any


def prefect_headers() -> dict[str, str]:
    """For raw HTTP calls to the test Prefect server's API, which is locked (basic authentication)."""
    from tasks.adapters.prefect_auth import CLIENT_VAR, basic_auth_header
    return basic_auth_header(os.environ[CLIENT_VAR])


def prefect_database_rows() -> Iterator[tuple[str, str]]:
    """(table, the row as text) for every row of the test Prefect server's own database, for the leak scans."""
    import sqlite3

    import sqlalchemy as sa
    if "url" in PREFECT_DB:
        eng = sa.create_engine(PREFECT_DB["url"].replace("+asyncpg", "+psycopg", 1))
        try:
            with eng.connect() as c:
                tables = c.execute(sa.text("select table_name from information_schema.tables "
                                           "where table_schema = 'public' and table_type = 'BASE TABLE'")).scalars().all()
                for t in tables:
                    for row in c.execute(sa.text(f'select * from "{t}"')):
                        yield t, " ".join(str(v) for v in row)
        finally:
            eng.dispose()
        return
    dbs = list(Path(os.environ["PREFECT_HOME"]).glob("*.db"))
    assert dbs, "no Prefect database found"
    for db in dbs:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            for (t,) in con.execute("select name from sqlite_master where type='table'").fetchall():
                for row in con.execute(f'select * from "{t}"'):
                    yield t, " ".join(str(v) for v in row)
        finally:
            con.close()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    api = os.environ["PREFECT_API_URL"]
    port = api.rsplit(":", 1)[1].split("/")[0]
    from tasks.adapters import prefect_auth
    env = {**os.environ, **prefect_auth.server_env(os.environ[prefect_auth.CLIENT_VAR], os.environ["RO_APP_BASE_URL"])}
    pg = _prefect_pg_database()
    if pg:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = pg
        PREFECT_DB["url"] = pg
    with open(_TMP / "prefect-server.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", port], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_http(f"{api}/health", 180)
        yield api
    finally:
        _drain_prefect_workers()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if pg:
            _drop_prefect_pg_database(pg)


def _drain_prefect_workers() -> None:
    """Send what this process still queues for the server (run logs, events) while it is up: stopped first,
    Prefect's workers retry a dead server for over a minute when the process exits."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=30)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    """When something failed, show the tails of the server logs: CI keeps nothing else."""
    if exitstatus == 0:
        return
    for name in ("prefect-server.log", "serve.log"):
        path = _TMP / name
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()
            interesting = [ln for ln in lines if ln[:2].isdigit() or "Error" in ln][-40:]
            terminalreporter.write_sep("-", f"{name} (last {len(interesting)} notable lines)")
            for ln in interesting:
                terminalreporter.write_line(ln[:300])


class FlowServer:
    """`python -m flows.serve` in a subprocess, so tests can kill it and start it again: the flows deployed to
    the local `restriction-orders-embedded` pool and executed by the warm worker inside that process (flows/serve.py);
    with RO_SERVE_MODE=process in `env`, the old `prefect.serve` path."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = _TMP / "serve.log"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            # Its own process group, so `kill()` takes its flow runs down with it, as a crash of the machine.
            self.proc = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=ROOT, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """The deployments are there and, on the warm path, this process's worker has told Prefect it is up
        (its name ends with the process id: flows/serve.py `worker_name`)."""
        import asyncio

        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        from flows.serve import EMBEDDED_POOL
        assert self.proc is not None
        pid, warm = self.proc.pid, self.env.get("RO_SERVE_MODE", "warm") != "process"

        async def ready() -> bool:
            async with get_client() as c:
                if len(await c.read_deployments()) < 10:  # the order flows, urgent-order, ops flows, monitors
                    return False
                if not warm:
                    return True
                try:
                    workers = await c.read_workers_for_work_pool(EMBEDDED_POOL)
                except ObjectNotFound:
                    return False
                return any(w.name.endswith(f"-{pid}") for w in workers)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return  # died (a failpoint may fire at once): the caller sees it in `proc`
            if asyncio.run(ready()):
                return
            time.sleep(0.2)
        raise TimeoutError("flows not served")

    def kill(self) -> None:
        if self.proc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def wait_dead(self, timeout: float) -> None:
        """Wait for the process to die by itself (a failpoint); then forget it."""
        assert self.proc is not None
        self.proc.wait(timeout)
        self.proc = None

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
            self.kill()  # and whatever flow runs it left


@pytest.fixture(scope="session")
def prefect_ad(db: Database, settings: Settings, prefect_server: str) -> Adapters:
    """The adapters with the real engine: a Prefect server (and, with `flow_server`, served flows)."""
    from flows.bootstrap import build
    return build(settings, db=db)


@pytest.fixture(scope="session")
def flow_server(db: Database, smtp: Path, prefect_server: str) -> Iterator[FlowServer]:
    env = os.environ.copy()
    env["RO_HOUSEKEEPING_SECONDS"] = "1"
    env["RO_SERVE_SCHEDULES"] = "0"
    env["RO_PAPER_RESUME_SECONDS"] = "1"  # the paper sweep probes the gateway soon after a fallback
    env["RO_EXECUTE_RETRY_DELAYS"] = "[1, 2, 4]"  # three bounded retries, shorter than production's 1, 5, 15 s
    env["RO_WORKER_HEARTBEAT_SECONDS"] = "2"  # a lost worker's runs are found within seconds, not half a minute
    env["PYTHONPATH"] = str(ROOT)
    fs = FlowServer(env)
    fs.start()
    yield fs
    fs.stop()
