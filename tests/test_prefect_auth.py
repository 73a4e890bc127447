"""Prefect's API locked (issue 16, part 2): basic authentication with a secret kept owner-only under the data
directory, CORS for the app's origin only, and every process of ours using it.

The session's Prefect server (tests/conftest.py) runs locked too, so every end-to-end test goes through it;
here the lock itself is checked against that real server, and once against a whole embedded default.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.adapters import Adapters, prefect_auth
from tests.conftest import ROOT, free_port, prefect_headers

APP_ORIGIN = "http://127.0.0.1:8000"  # RO_APP_BASE_URL of the test session


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the secret file -----------------------------------------------------------------------------------

def test_the_secret_is_made_once_owner_only_and_reused(tmp_path: Path) -> None:
    path = prefect_auth.secret_file(tmp_path / "data")
    first = prefect_auth.ensure_secret(path)
    assert _mode(path) == 0o600
    user, _, password = first.partition(":")
    assert user == prefect_auth.USER and len(password) >= 40
    assert prefect_auth.ensure_secret(path) == first  # the next start uses the same one
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_a_secret_file_others_could_read_is_made_owner_only(tmp_path: Path) -> None:
    path = prefect_auth.secret_file(tmp_path)
    secret = prefect_auth.ensure_secret(path)
    os.chmod(path, 0o644)
    assert prefect_auth.ensure_secret(path) == secret
    assert _mode(path) == 0o600


def test_an_unusable_secret_file_is_refused_not_replaced(tmp_path: Path) -> None:
    path = prefect_auth.secret_file(tmp_path)
    path.write_text("")
    os.chmod(path, 0o600)
    with pytest.raises(prefect_auth.SecretFileError):
        prefect_auth.ensure_secret(path)
    assert path.read_text() == ""


def _make(path: str) -> str:
    return prefect_auth.ensure_secret(Path(path))


def test_processes_starting_at_once_agree_on_one_secret(tmp_path: Path) -> None:
    path = prefect_auth.secret_file(tmp_path / "race")
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        made = pool.map(_make, [str(path)] * 12)
    assert len(set(made)) == 1 and path.read_text().strip() == made[0]
    assert _mode(path) == 0o600 and [p.name for p in path.parent.iterdir()] == [path.name]


def test_the_cli_and_the_serving_process_pick_the_embedded_secret_up(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    secret = prefect_auth.ensure_secret(prefect_auth.secret_file(tmp_path))
    monkeypatch.delenv(prefect_auth.CLIENT_VAR)
    assert prefect_auth.use_embedded_secret(tmp_path / "elsewhere") is False
    assert prefect_auth.CLIENT_VAR not in os.environ
    assert prefect_auth.use_embedded_secret(tmp_path) is True
    assert os.environ[prefect_auth.CLIENT_VAR] == secret
    monkeypatch.setenv(prefect_auth.CLIENT_VAR, "ops:from-the-secret-store")  # production's own value wins
    assert prefect_auth.use_embedded_secret(tmp_path) is True
    assert os.environ[prefect_auth.CLIENT_VAR] == "ops:from-the-secret-store"


# --- the locked server (the session's real Prefect server) --------------------------------------------------

@pytest.mark.e2e
def test_anonymous_calls_get_401_and_the_auth_string_opens(prefect_server: str) -> None:
    fake_run = "00000000-0000-4000-8000-000000000001"
    forged_resume = {"run_input": {"decided_by": "DEMO-KALMAR-ASSESSOR", "harm_found": True, "decision": "restrict"}}
    wrong = prefect_auth.basic_auth_header("restriction-orders:not-the-secret")
    with httpx.Client(base_url=prefect_server, timeout=10) as c:
        for headers in ({}, wrong, {"Authorization": "Bearer whatever"}):
            assert c.post("/flow_runs/filter", json={"limit": 1}, headers=headers).status_code == 401
            assert c.post(f"/flow_runs/{fake_run}/resume", json=forged_resume, headers=headers).status_code == 401
            assert c.post("/deployments/filter", json={}, headers=headers).status_code == 401
            assert c.get("/admin/version", headers=headers).status_code == 401
        assert c.get("/health").status_code == 200  # liveness probes stay open, and tell nothing
        assert c.post("/flow_runs/filter", json={"limit": 1}, headers=prefect_headers()).status_code == 200
        assert c.get("/admin/version", headers=prefect_headers()).status_code == 200
        # With the secret the request gets through to Prefect itself, which knows no such run.
        assert c.get(f"/flow_runs/{fake_run}", headers=prefect_headers()).status_code == 404


@pytest.mark.e2e
def test_prefects_own_client_sends_the_auth_string(prefect_server: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    from tasks.adapters.engine import PrefectEngine

    async def count(make: object) -> int:
        async with make() as c:  # type: ignore[operator]
            return len(await c.read_flows(limit=1))

    assert asyncio.run(count(PrefectEngine().client)) >= 0  # the client every call of the engine adapter uses
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: "restriction-orders:wrong"}), \
            pytest.raises(httpx.HTTPStatusError) as refused:
        asyncio.run(count(get_client))
    assert refused.value.response.status_code == 401


@pytest.mark.e2e
def test_cors_answers_the_apps_origin_only(prefect_server: str) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    with httpx.Client(base_url=prefect_server, timeout=10) as c:
        ok = c.options("/flow_runs/filter", headers={"Origin": APP_ORIGIN, **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == APP_ORIGIN
        for evil in ("http://evil.example", "http://127.0.0.1:4200.evil.example", "null", "http://localhost:8000"):
            refused = c.options("/flow_runs/filter", headers={"Origin": evil, **preflight})
            assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers, evil
            simple = c.post("/flow_runs/filter", json={"limit": 1}, headers={"Origin": evil, **prefect_headers()})
            assert "access-control-allow-origin" not in simple.headers, evil


@pytest.mark.e2e
def test_healthz_says_when_the_auth_string_is_wrong(prefect_ad: Adapters) -> None:
    """/healthz's `prefect` component (the engine adapter's health), with the Prefect engine."""
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    from forms.health import _engine
    assert asyncio.run(_engine(prefect_ad)).ok
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: "restriction-orders:wrong"}):
        wrong = asyncio.run(_engine(prefect_ad))
    assert not wrong.ok and "401" in wrong.detail


# --- the embedded default, whole ---------------------------------------------------------------------------

@pytest.mark.e2e
def test_make_run_locks_prefect_and_every_process_uses_it(tmp_path: Path) -> None:
    """`python -m forms.embedded` (what `make run` starts) on ports of its own: the secret file, 401 without
    it, the app's health check and the CLI through it, and the secret in no log and not in what it prints."""
    data = tmp_path / "data"
    ports = {"RO_PREFECT_PORT": free_port(), "RO_APP_PORT": free_port(), "RO_SMTP_PORT": free_port()}
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "RO_DATABASE_URL", prefect_auth.CLIENT_VAR, "PREFECT_API_URL", "PREFECT_HOME")}
    env.update({k: str(v) for k, v in ports.items()})
    env.update({"RO_DATA_DIR": str(data), "PYTHONPATH": str(ROOT), "PREFECT_UI_ENABLED": "true"})
    api = f"http://127.0.0.1:{ports['RO_PREFECT_PORT']}/api"
    out_path = tmp_path / "make-run.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "forms.embedded"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "is running" not in out_path.read_text(errors="replace"):
            assert proc.poll() is None, out_path.read_text(errors="replace")
            assert time.monotonic() < deadline, out_path.read_text(errors="replace")
            time.sleep(1)
        path = prefect_auth.secret_file(data)
        assert _mode(path) == 0o600
        secret = path.read_text().strip()
        assert str(path) in out_path.read_text()  # where the secret is, for the dashboard's login
        with httpx.Client(base_url=api, timeout=10) as c:
            assert c.post("/flow_runs/filter", json={"limit": 1}).status_code == 401
            assert c.post("/flow_runs/filter", json={"limit": 1},
                          headers=prefect_auth.basic_auth_header(secret)).status_code == 200
            deployments = c.post("/deployments/filter", json={}, headers=prefect_auth.basic_auth_header(secret))
            # The serving process registered its deployments through the locked API.
            deadline = time.monotonic() + 90
            while len(deployments.json()) < 4 and time.monotonic() < deadline:
                time.sleep(1)
                deployments = c.post("/deployments/filter", json={}, headers=prefect_auth.basic_auth_header(secret))
            assert len(deployments.json()) >= 4
        ui = httpx.get(f"http://127.0.0.1:{ports['RO_PREFECT_PORT']}/ui-settings", timeout=10)
        assert ui.json().get("auth") == "BASIC"  # the dashboard asks for the auth string
        health = httpx.get(f"http://127.0.0.1:{ports['RO_APP_PORT']}/healthz", timeout=10).json()
        assert health["prefect"]["ok"], health  # the app's calls carry the secret
        cli_env = {**env, "PREFECT_API_URL": api}  # no auth string: the CLI reads the embedded one
        cli = subprocess.run([sys.executable, "-m", "forms.cli", "automations"], cwd=ROOT, env=cli_env,
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    secret = prefect_auth.secret_file(data).read_text().strip()
    password = secret.partition(":")[2]
    assert password not in out_path.read_text(errors="replace")
    for log in (data / "logs").glob("*.log"):
        assert password not in log.read_text(errors="replace"), log.name
