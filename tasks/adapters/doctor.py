"""The probes behind `restriction-orders doctor` and the production start check (the rules: models/doctor.py).

- Prefect: `GET /health` (open on a locked server) says it is reachable; `GET /admin/version` without the auth
  string must be refused (the API is locked) and with PREFECT_API_AUTH_STRING answered (ours is the right one).
- The orders database: one connection, `alembic_version` against the newest migration of this code.
- The regions file: loaded, and every region's unset values (models/regions.py `unset()`).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from models import doctor
from models.doctor import DatabaseProbe, Environment, PrefectProbe, Probes, Problem
from tasks.adapters.settings import DEFAULT_SESSION_SECRET, MIN_SESSION_SECRET_LENGTH, ROOT, Settings

log = logging.getLogger(__name__)
TIMEOUT = 5.0


class NotReady(RuntimeError):
    """A production process must not start like this; the message lists every error."""


def environment(settings: Settings) -> Environment:
    secret = settings.session_secret.strip()
    return Environment(
        app_base_url=settings.app_base_url, app_base_url_set="app_base_url" in settings.model_fields_set,
        smtp_from=settings.smtp_from, session_secret_length=len(secret),
        session_secret_is_default=secret == DEFAULT_SESSION_SECRET,
        min_session_secret_length=MIN_SESSION_SECRET_LENGTH, embedded_login=settings.embedded_login,
        demo=settings.demo, database_url_set=bool(settings.database_url),
        trusted_proxies=settings.trusted_proxies, forwarded_allow_ips=settings.forwarded_allow_ips)


def _prefect_client_settings() -> tuple[str, str]:
    from prefect.settings import get_current_settings
    api = get_current_settings().api
    auth = api.auth_string
    return str(api.url or "").rstrip("/"), auth.get_secret_value() if auth is not None else ""


def probe_prefect(api_url: str | None = None, auth_string: str | None = None) -> PrefectProbe:
    import httpx
    url, auth = _prefect_client_settings()
    url, auth = (api_url if api_url is not None else url).rstrip("/"), auth if auth_string is None else auth_string
    if not url:
        return PrefectProbe(api_url="")
    try:
        with httpx.Client(timeout=TIMEOUT) as http:
            health = http.get(f"{url}/health")
            if health.status_code != 200:
                return PrefectProbe(url, detail=f"/health: HTTP {health.status_code}")
            bare = http.get(f"{url}/admin/version")
            headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
            authed = http.get(f"{url}/admin/version", headers=headers)
    except httpx.HTTPError as exc:
        return PrefectProbe(url, detail=type(exc).__name__)
    return PrefectProbe(url, reachable=True, detail=f"HTTP {authed.status_code}",
                        authenticated=authed.status_code == 200, open_without_auth=bare.status_code == 200)


def migrations_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    cfg = Config(str(ROOT / "migrations" / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    return str(ScriptDirectory.from_config(cfg).get_current_head())


def probe_database(url: str) -> DatabaseProbe:
    import sqlalchemy as sa
    head = migrations_head()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            try:
                revision = c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            except sa.exc.ProgrammingError:  # PostgreSQL: no such table
                revision = None
            except sa.exc.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                revision = None
    except sa.exc.SQLAlchemyError as exc:
        return DatabaseProbe(reachable=False, detail=type(exc).__name__, head=head)
    finally:
        engine.dispose()
    return DatabaseProbe(reachable=True, revision=revision, head=head)


def probe_regions() -> dict[str, Any]:
    from models.regions import load_regions
    try:
        regions = load_regions()
    except (ValueError, OSError) as exc:
        return {"regions_error": str(exc).splitlines()[0]}
    return {"regions_unset": {c: r.unset() for c, r in regions.items()},
            "regions_unsourced": {c: r.unsourced() for c, r in regions.items()}}


def probes(settings: Settings) -> Probes:
    return Probes(prefect=probe_prefect(), database=probe_database(settings.orders_db_url), **probe_regions())


def run(settings: Settings) -> list[Problem]:
    """Every problem of this environment (models/doctor.py `check`)."""
    return doctor.check(environment(settings), probes(settings))


def refuse_to_start_if_broken(settings: Settings, who: str) -> list[Problem]:
    """In production (no embedded login, no demo): raise NotReady listing every error, log the warnings.
    Elsewhere (`make run`, the tests): nothing is checked."""
    if not environment(settings).production:
        return []
    problems = run(settings)
    for p in problems:
        log.warning("%s: %s", who, p.line())
    if errs := doctor.errors(problems):
        raise NotReady(f"{who} startar inte: {len(errs)} fel (restriction-orders doctor visar samma lista):\n"
                       + "\n".join(f"  {p.line()}" for p in errs))
    return problems
