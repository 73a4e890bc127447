"""`make run`: the whole system on the embedded default, in the foreground until Ctrl-C.

Starts a local Prefect server (SQLite under .data/prefect), the SMTP sink (.data/mail), the flow-serving
process and the web app; migrates the orders database and seeds the demo directory first.

The Prefect API is locked with basic authentication (tasks/adapters/prefect_auth.py): the secret is made at first
start in .data/prefect-api-auth (owner-only) and given to the server and to every process started here;
CORS answers the app's origin only. The dashboard asks for the secret once: paste the file's content.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.adapters import prefect_auth
from tasks.adapters.processes import ExitedEarly, wait_http

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RO_DATA_DIR", ROOT / ".data")).resolve()
PREFECT_PORT = int(os.environ.get("RO_PREFECT_PORT", "4200"))
APP_PORT = int(os.environ.get("RO_APP_PORT", "8000"))
SMTP_PORT = int(os.environ.get("RO_SMTP_PORT", "8025"))


def _env() -> dict[str, str]:
    env = os.environ.copy()
    env.update({
        "RO_DATA_DIR": str(DATA), "RO_SMTP_PORT": str(SMTP_PORT),
        "RO_APP_BASE_URL": f"http://127.0.0.1:{APP_PORT}",
        "PREFECT_HOME": str(DATA / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The flows run on a warm worker woken by Prefect's events (flows/serve.py); with RO_SERVE_MODE=process
        # (`prefect.serve`) runners poll every 10 s by default, and a resumed order should not wait that long.
        "PREFECT_RUNNER_POLL_FREQUENCY": env.get("PREFECT_RUNNER_POLL_FREQUENCY", "1"),
        "PYTHONPATH": str(ROOT),
        # The embedded default is the demo: every page and PDF says so (tasks/settings.py `demo`).
        "RO_DEMO": env.get("RO_DEMO", "true"),
    })
    return env


def _wait(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    try:
        wait_http(url, timeout, proc)
    except ExitedEarly as exc:
        raise SystemExit(f"{exc}; see {DATA / 'logs'}") from None
    except TimeoutError as exc:
        raise SystemExit(str(exc)) from None


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `make` and service managers stop us with SIGTERM: clean up the same way


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    env = _env()
    secret_path = prefect_auth.secret_file(DATA)
    secret = prefect_auth.ensure_secret(secret_path)
    env.update(prefect_auth.client_env(secret))  # before Prefect is imported here, and for every child
    server_env = {**env, **prefect_auth.server_env(secret, env["RO_APP_BASE_URL"])}
    if "PREFECT_LOGGING_SETTINGS_PATH" not in env:  # suspensions at INFO in every process (quiet_suspensions.py)
        from tasks.adapters.quiet_suspensions import write_logging_settings
        env["PREFECT_LOGGING_SETTINGS_PATH"] = str(write_logging_settings(DATA / "prefect-logging.yml"))
    os.environ.update(env)
    logs = DATA / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    from models.regions import load_regions
    from tasks.adapters.database import Database
    from tasks.adapters.demo import seed_demo
    from tasks.adapters.settings import Settings
    from tasks.adapters.smtp_sink import start_sink

    db = Database(Settings().orders_db_url)
    db.migrate()
    seed_demo(db, load_regions())
    db.dispose()
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, args: list[str], child_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
            p = subprocess.Popen(args, cwd=ROOT, env=child_env or env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        procs.append(p)
        return p

    sink = start_sink(DATA / "mail", port=SMTP_PORT)
    try:
        server = spawn("prefect-server", [sys.executable, "-m", "prefect", "server", "start",
                                          "--host", "127.0.0.1", "--port", str(PREFECT_PORT)], server_env)
        print(f"starting the Prefect server on http://127.0.0.1:{PREFECT_PORT} …", flush=True)
        _wait(f"http://127.0.0.1:{PREFECT_PORT}/api/health", 120, server)
        from tasks.adapters.automations import ensure_automations
        from tasks.adapters.automations_monitoring import ensure_monitoring_automations
        try:
            ensure_automations()
            ensure_monitoring_automations()
        except Exception as exc:  # the dashboard's alerts are a convenience; the system runs without them
            print(f"warning: automations not created: {type(exc).__name__}", file=sys.stderr)
        spawn("flows", [sys.executable, "-m", "flows.serve"])
        app = spawn("app", [sys.executable, "-m", "uvicorn", "forms.app:app", "--host", "127.0.0.1",
                            "--port", str(APP_PORT), "--proxy-headers"])
        _wait(f"http://127.0.0.1:{APP_PORT}/healthz", 60, app)
        print(
            "\nrestriction-orders is running (embedded default)\n"
            f"  app (forms, queues):   http://127.0.0.1:{APP_PORT}\n"
            f"  Prefect dashboard:     http://127.0.0.1:{PREFECT_PORT}\n"
            f"    it asks for the API auth string: paste the content of {secret_path}\n"
            f"    (readable by you only; `cat {secret_path}`)\n"
            f"  outgoing mail:         {DATA / 'mail'} (SMTP sink on 127.0.0.1:{SMTP_PORT})\n"
            f"  logs:                  {logs}\n"
            "Log in as any demo user on the app's login page. Ctrl-C stops everything.\n", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        print("a process stopped; see the logs. Shutting down.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping …", flush=True)
        return 0
    finally:
        _stop(procs)
        sink.stop()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop every child (each in its own session, so a terminal's Ctrl-C does not reach them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for p in reversed(procs):
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
