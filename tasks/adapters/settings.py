"""Settings from the environment. Read once, by the composition root (flows/bootstrap.py), which builds
the adapters from them; no adapter reads the environment itself."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent.parent
# Good enough for the embedded login on one's own machine, where the demo staff log in with one click; a
# production app (RO_EMBEDDED_LOGIN=false) refuses to start with it (forms.auth.check_session_settings).
DEFAULT_SESSION_SECRET = "embedded-default-not-secret"
MIN_SESSION_SECRET_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RO_", extra="ignore")

    data_dir: Path = ROOT / ".data"
    # DATABASE_URL (no prefix) is the conventional name production and CI set.
    database_url: str = Field(default="", validation_alias=AliasChoices("DATABASE_URL", "RO_DATABASE_URL"))

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_from: str = "Begränsningsbeställningar <noreply@restriction-orders.invalid>"
    smtp_timeout: float = 10.0

    gateway: Literal["simulated", "manual", "down"] = "simulated"
    # While this file exists the gateway is down, whatever `gateway` says (tasks/adapters/gateway.py).
    gateway_down_flag: Path | None = None
    # Orders that fell back to paper go back to the digital route when the execution system answers again:
    # first probe this long after the fallback, then backing off, doubling up to ten times as long.
    paper_resume_seconds: float = 60.0
    # The execute task's bounded retries before the order falls back to paper (a JSON list in the env).
    execute_retry_delays: list[float] = [1.0, 5.0, 15.0]
    app_base_url: str = "http://127.0.0.1:8000"
    # The Prefect dashboard as an admin's browser reaches it: the order page links an order's run there.
    prefect_ui_url: str = "http://127.0.0.1:4200"
    trusted_proxies: str = "127.0.0.1,::1"
    # uvicorn's own setting (its default): whose X-Forwarded-For it believes. Read here only for `doctor`
    # (models/doctor.py check_proxy): a proxy in both lists locks everyone out.
    forwarded_allow_ips: str = Field(default="127.0.0.1",
                                     validation_alias=AliasChoices("FORWARDED_ALLOW_IPS", "RO_FORWARDED_ALLOW_IPS"))
    session_secret: str = DEFAULT_SESSION_SECRET
    embedded_login: bool = True
    # The embedded demo (`make run`, the tests): every page and PDF says "Demo", and a region's mailbox that is
    # not set falls back to its `.invalid` demo stand-in. Off unless set: production never sees either.
    demo: bool = False
    # An outbox message waiting longer than this makes /healthz say "degraded" (it is still retried).
    outbox_alarm_minutes: int = 15
    # The reconciler's restart policy (models/runs.py): an order whose runs keep failing gets at most this
    # many new runs, the first at once, then 10 s, 20 s, 40 s ... after the previous one; then `failed`.
    run_restarts_max: int = 5
    run_restart_delay_seconds: float = 10.0
    # How often the reconciler reads a window of open orders' runs from Prefect to find ended ones.
    run_liveness_seconds: float = 10.0
    # A run Pending or Running this long whose worker has stopped heartbeating is crashed by housekeeping
    # (tasks/adapters/stuck_runs.py), and the reconciler replaces it. Workers heartbeat every 10 s.
    stuck_run_seconds: float = 30.0
    # A stored decision that has not moved its order on for this long: /healthz degraded, admin overview,
    # event order.decision.stalled and the automation "Stored decision not moving".
    stalled_decision_seconds: float = 120.0
    # The app's own urgent dispatcher (forms/app.py): escalations without Prefect. 0 turns it off.
    app_dispatch_seconds: float = 15.0
    # Paging beside the email (tasks/adapters/notifiers.py): a JSON POST per page, off while the URL is empty.
    paging_webhook_url: str = ""
    paging_webhook_token: str = ""      # sent as `Authorization: Bearer …` when set
    paging_webhook_timeout: float = 3.0
    # The shipped Prefect automations notify through this block (`<block-type-slug>/<block-name>`) when set.
    automation_notify_block: str = ""

    @property
    def orders_db_url(self) -> str:
        if self.database_url:
            return self.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
        return f"sqlite:///{self.data_dir / 'orders.db'}"

