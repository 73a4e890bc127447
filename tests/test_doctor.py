"""`restriction-orders doctor` and the production start check: the rules (models/doctor.py) on snapshots, then
the real probes (tasks/adapters/doctor.py) on a bad and a good environment: the session's locked Prefect
server, a SQLite orders database (migrated or not), a regions file (shipped, or with every value set).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from forms.app import create_app
from forms.cli import main
from models.doctor import DatabaseProbe, Environment, PrefectProbe, Probes, check, errors
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.doctor import NotReady, environment, migrations_head, probe_database, probe_prefect
from tasks.adapters.settings import Settings
from tests.conftest import ROOT

GOOD_ENV = Environment(
    app_base_url="https://bestallningar.region.example", app_base_url_set=True,
    smtp_from="Begränsningsbeställningar <noreply@region.example>", session_secret_length=48,
    session_secret_is_default=False, min_session_secret_length=32, embedded_login=False, demo=False,
    database_url_set=True, trusted_proxies="10.0.0.5", forwarded_allow_ips="127.0.0.1")
GOOD_PROBES = Probes(
    prefect=PrefectProbe("https://prefect.region.example/api", reachable=True, detail="HTTP 200", authenticated=True),
    database=DatabaseProbe(reachable=True, revision="0004", head="0004"),
    regions_unset={"kalmar": []}, regions_unsourced={"kalmar": []})


def _codes(env: Environment = GOOD_ENV, probes: Probes = GOOD_PROBES) -> set[str]:
    return {p.code for p in errors(check(env, probes))}


def test_a_good_environment_has_no_problem() -> None:
    assert check(GOOD_ENV, GOOD_PROBES) == []
    assert GOOD_ENV.production


def test_a_bad_environment_lists_every_problem_at_once() -> None:
    env = dataclasses.replace(GOOD_ENV, app_base_url="http://127.0.0.1:8000", app_base_url_set=False,
                              smtp_from="Begränsningsbeställningar <noreply@restriction-orders.invalid>",
                              session_secret_length=10, database_url_set=False, trusted_proxies="127.0.0.1,::1")
    probes = Probes(prefect=PrefectProbe("http://prefect:4200/api", detail="ConnectError"),
                    database=DatabaseProbe(reachable=True, revision="0003", head="0004"),
                    regions_unset={"kalmar": [], "jonkoping": ["support_phone", "postal_route"]},
                    regions_unsourced={"jonkoping": ["advice_phone"]})
    problems = check(env, probes)
    assert {p.code for p in errors(problems)} == {"app_base_url", "smtp_from", "session_secret", "database_url",
                                                  "forwarded_allow_ips", "prefect", "migrations", "regions"}
    assert [p.code for p in problems if p.severity == "warning"] == ["regions_source"]
    assert problems[-1].severity == "warning"  # errors first
    text = "\n".join(p.line() for p in problems)
    assert "jonkoping" in text and "support_phone, postal_route" in text and "0003" in text


@pytest.mark.parametrize(("change", "code"), [
    ({"app_base_url": "https://localhost/"}, "app_base_url"),
    ({"app_base_url": "http://[::1]:8000"}, "app_base_url"),
    ({"app_base_url": "http://bestallningar.region.example"}, "app_base_url"),  # cookie without Secure
    ({"smtp_from": "noreply@x.invalid"}, "smtp_from"),
    ({"session_secret_is_default": True}, "session_secret"),
    ({"embedded_login": True}, "embedded_login"),
    ({"demo": True}, "demo"),
    ({"trusted_proxies": ""}, "trusted_proxies"),
    ({"trusted_proxies": "proxy.region.example"}, "trusted_proxies"),
    # The proxy on the app's machine: uvicorn believes its X-Forwarded-For, the app sees the user's address.
    ({"trusted_proxies": "127.0.0.1"}, "forwarded_allow_ips"),
    ({"trusted_proxies": "10.0.0.0/24", "forwarded_allow_ips": "10.0.0.5"}, "forwarded_allow_ips"),
    ({"forwarded_allow_ips": "*"}, "forwarded_allow_ips"),
])
def test_each_environment_problem(change: dict[str, object], code: str) -> None:
    assert _codes(dataclasses.replace(GOOD_ENV, **change)) == {code}  # type: ignore[arg-type]


def test_proxy_on_the_app_machine_is_fine_when_uvicorn_ignores_forwarded_headers() -> None:
    assert _codes(dataclasses.replace(GOOD_ENV, trusted_proxies="127.0.0.1", forwarded_allow_ips="")) == set()


@pytest.mark.parametrize(("prefect", "codes"), [
    (PrefectProbe(""), {"prefect"}),
    (PrefectProbe("https://p/api", detail="ConnectError"), {"prefect"}),
    (PrefectProbe("https://p/api", reachable=True, detail="HTTP 401"), {"prefect_auth"}),
    (PrefectProbe("https://p/api", reachable=True, detail="HTTP 200", authenticated=True, open_without_auth=True),
     {"prefect_open"}),
])
def test_each_prefect_problem(prefect: PrefectProbe, codes: set[str]) -> None:
    assert _codes(probes=dataclasses.replace(GOOD_PROBES, prefect=prefect)) == codes


def test_database_problems() -> None:
    assert _codes(probes=dataclasses.replace(GOOD_PROBES, database=DatabaseProbe(False, "OperationalError"))) == {
        "database"}
    assert _codes(probes=dataclasses.replace(GOOD_PROBES, database=DatabaseProbe(True, head="0004"))) == {
        "migrations"}
    assert _codes(probes=dataclasses.replace(GOOD_PROBES, regions_error="invalid region settings")) == {"regions"}


# --- the real probes, a bad and a good environment -------------------------------------------------------

def _complete_regions(tmp_path: Path) -> Path:
    """Kalmar as shipped, with its three mailboxes given (test) values and sources: nothing unset."""
    text = (ROOT / "models" / "regions.toml").read_text(encoding="utf-8")
    starts = [m.start() for m in re.finditer(r"(?m)^\[\[regions\]\]$", text)]
    kalmar = text[:starts[1]]
    kalmar = re.sub(r'\{demo = "(\w+)@kalmar\.invalid"\}',
                    r'{value = "\1@kalmar.example", source = "test: a mailbox of the region"}', kalmar)
    path = tmp_path / "regions.toml"
    path.write_text(kalmar, encoding="utf-8")
    return path


def _production_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, migrated: bool) -> Settings:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    if migrated:
        Database(url).migrate()
    monkeypatch.setenv("RO_APP_BASE_URL", "https://bestallningar.region.example")
    monkeypatch.setenv("RO_SMTP_FROM", "Begränsningsbeställningar <noreply@region.example>")
    monkeypatch.setenv("RO_SESSION_SECRET", "s" * 48)
    monkeypatch.setenv("RO_EMBEDDED_LOGIN", "false")
    monkeypatch.setenv("RO_DEMO", "false")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("RO_TRUSTED_PROXIES", "10.0.0.5")
    monkeypatch.setenv("REGIONS_FILE", str(_complete_regions(tmp_path)))
    return Settings()


def test_database_probe_reads_the_migration(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    assert probe_database(url) == DatabaseProbe(reachable=True, revision=None, head=migrations_head())
    Database(url).migrate()
    assert probe_database(url).revision == migrations_head()
    assert not probe_database("postgresql+psycopg://nobody@127.0.0.1:9/none").reachable


@pytest.mark.e2e
def test_prefect_probe_on_the_locked_server(prefect_server: str) -> None:
    good = probe_prefect()
    assert good.reachable and good.authenticated and not good.open_without_auth, good
    wrong = probe_prefect(auth_string="restriction-orders:wrong")
    assert wrong.reachable and not wrong.authenticated and wrong.detail == "HTTP 401"
    assert not probe_prefect(api_url="http://127.0.0.1:9/api").reachable


@pytest.mark.e2e
def test_doctor_on_a_good_environment_and_the_app_starts(prefect_server: str, ad: Adapters, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    settings = _production_env(monkeypatch, tmp_path, migrated=True)
    assert environment(settings).production
    production = dataclasses.replace(ad, settings=settings)
    assert main(["doctor"], ad=production) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    # PREFECT_API_URL is this machine in the tests: a warning, not an error.
    assert "0 fel" in out and "prefect_local" in out
    create_app(production)  # starts


@pytest.mark.e2e
def test_doctor_on_a_bad_environment_and_the_app_refuses_to_start(prefect_server: str, ad: Adapters,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings
    _production_env(monkeypatch, tmp_path, migrated=False)
    for name in ("RO_APP_BASE_URL", "REGIONS_FILE", "RO_SMTP_FROM"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("RO_SESSION_SECRET", "short")
    monkeypatch.setenv("RO_TRUSTED_PROXIES", "127.0.0.1")  # proxy on this machine, uvicorn's default
    production = dataclasses.replace(ad, settings=Settings())
    with temporary_settings({PREFECT_API_AUTH_STRING: "restriction-orders:wrong"}):
        assert main(["doctor"], ad=production) == 1
        out = capsys.readouterr().out
        for code in ("app_base_url", "smtp_from", "session_secret", "forwarded_allow_ips", "prefect_auth",
                     "migrations", "regions"):
            assert f"[{code}]" in out, (code, out)
        assert "Region jonkoping" in out and "support_phone" in out
        with pytest.raises(NotReady) as refused:
            create_app(production)
    message = str(refused.value)
    assert message.startswith("appen startar inte") and "[migrations]" in message and "[prefect_auth]" in message


def test_a_warm_worker_refuses_to_start_in_a_bad_production_environment(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.adapters import warm_worker
    _production_env(monkeypatch, tmp_path, migrated=False)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}), pytest.raises(NotReady) as refused:
        warm_worker.main(["--pool", "restriction-orders"])
    assert str(refused.value).startswith("arbetaren startar inte") and "[prefect]" in str(refused.value)
    assert "[migrations]" in str(refused.value)
