"""Shared helpers for the form app's tests: the app served by uvicorn in a thread, API clients, order
bodies and personal numbers made up for the test (valid check digit, birth date relative to today).

Used as a plugin (`pytest_plugins = ["tests.webapp"]`) so that the served app is one per test session.
"""

from __future__ import annotations

import itertools
import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn

from models.clock import STOCKHOLM
from tasks.adapters import Adapters
from tests.conftest import FlowServer
from tests.polling import poll_status

PATIENT = "19121212-1212"  # Skatteverket's official test number
UNIT = "DEMO-KALMAR-UNIT"
# A documentation address (RFC 5737): the test server treats requests as coming from it when a loopback
# peer sends `X-Forwarded-For`, which is how a request from outside the trusted proxies looks.
UNTRUSTED = "203.0.113.7"


def staff(role: str, region: str = "kalmar") -> str:
    return f"DEMO-{region.upper()}-{role.upper()}"


def luhn(nine: str) -> int:
    total = sum(sum(divmod(int(d) * (2 - i % 2), 10)) for i, d in enumerate(nine))
    return (10 - total % 10) % 10


def today() -> date:
    return datetime.now(STOCKHOLM).date()


def born_years_ago(years: int, extra_days: int = 40) -> date:
    """A birth date that makes the person exactly `years` old today (for weeks to come)."""
    t = today()
    try:
        anniversary = t.replace(year=t.year - years)
    except ValueError:  # 29 February
        anniversary = t.replace(year=t.year - years, day=28)
    return anniversary - timedelta(days=extra_days)


_SERIALS: dict[date, Iterator[int]] = {}


def _fresh_serial(born: date) -> int:
    """A serial not yet given out in this process for that birth date: a random one could repeat (900 serials
    a day), and a repeated patient makes a duplicate-order warning no test asked for."""
    serial = next(_SERIALS.get(born, iter(())), None)
    if serial is None:  # the first, or all 900 given out (a test of hundreds of orders): a new round
        _SERIALS[born] = iter(random.sample(range(100, 1000), 900))
        serial = next(_SERIALS[born])
    return serial


def pnr(born: date | None = None, serial: int | None = None) -> str:
    """A 12-digit personal number with a valid check digit, a fresh serial by default (a new patient)."""
    born = born or born_years_ago(40)
    s = f"{serial if serial is not None else _fresh_serial(born):03d}"
    nine = f"{born:%y%m%d}{s}"
    return f"{born:%Y%m%d}-{s}{luhn(nine)}"


def body(order_type: str = "seal_or_lock", **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"order_type": order_type, "initiative": "care", "patient_personal_number": pnr(),
                         "care_unit_hsa_id": UNIT, "region": "kalmar", "reason": "Hot mot patienten"}
    if order_type in ("seal_or_lock", "restore_access"):
        b["actions"] = ["seal_journal", "lock_login"]
    if order_type == "block_guardian":
        b["guardian_personal_number"] = pnr(born_years_ago(45))
    if order_type == "minor_access":
        b["patient_personal_number"] = pnr(born_years_ago(14))
        b["minor_access"] = {"grant": True, "recipient": "minor"}
    b.update(extra)
    if b.get("urgent"):  # the API asks the orderer's callback number for an urgent order (issue 13)
        b.setdefault("callback_phone", "070-123 45 67")
    return b


def client(base: str, user: str | None = None, **headers: str) -> httpx.Client:
    h = {"X-Remote-User": user} if user else {}
    return httpx.Client(base_url=base, headers={**h, **headers}, timeout=60, follow_redirects=False)


def status_of(c: httpx.Client, reference: str) -> str:
    r = c.get(f"/api/orders/{reference}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def wait_status(c: httpx.Client, reference: str, *wanted: str, timeout: float = 120) -> str:
    """Poll the API until the order's run has moved it to one of `wanted`. Generous: when Prefect's server
    is busy (503) the run is started by the reconciler instead, which can take a while under test load, and
    the served flows start their runs one subprocess after another (the ninth order of test_api waited over
    60 s on two cores at load 13–21)."""
    return poll_status(lambda: status_of(c, reference), reference, wanted, timeout, 0.3)


class LiveApp:
    """The real app on a free loopback port, in a thread of this process, with the adapters it is given."""

    def __init__(self, ad: Adapters) -> None:
        from forms.app import create_app
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(ad), log_level="warning", proxy_headers=True,
                                forwarded_allow_ips="127.0.0.1")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("app did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def live_app(ad: Adapters, smtp: Any) -> Iterator[str]:
    """Base URL of the app with the in-process engine: an order's run goes as far as it can within the
    request that starts or resumes it (no Prefect server)."""
    app = LiveApp(ad)
    app.start()
    yield app.base
    app.stop()


@pytest.fixture(scope="session")
def live_app_e2e(prefect_ad: Adapters, flow_server: FlowServer) -> Iterator[str]:
    """Base URL of the app with a real Prefect server and served flows behind it."""
    app = LiveApp(prefect_ad)
    app.start()
    yield app.base
    app.stop()


def _clients(base: str) -> Iterator[Any]:
    made: list[httpx.Client] = []

    def make(user: str | None = None, **headers: str) -> httpx.Client:
        c = client(base, user, **headers)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


@pytest.fixture
def api(live_app: str) -> Iterator[Any]:
    """`api(user)` -> an httpx client that identifies as `user` by the trusted header (in-process engine)."""
    yield from _clients(live_app)


@pytest.fixture
def api_e2e(live_app_e2e: str) -> Iterator[Any]:
    """The same against the app with a real Prefect server and served flows."""
    yield from _clients(live_app_e2e)


_STORED = itertools.count(random.randrange(0, 90000))


def stored_order(ad: Adapters, status: str, *, submitted_by: str = "DEMO-KALMAR-CLINICIAN", unit: str = UNIT,
                 region: str = "kalmar", **fields: Any) -> str:
    """An order row as its run would leave it at `status`, with a run id Prefect does not know.

    For states the served flows never wait in (they execute through the simulated registry, so nothing
    waits for a manual execution) or would take long to reach (a review that is due). The made-up run id
    keeps the reconciler from starting a run that would race the test."""
    from models.tables import Order
    now = datetime.now(STOCKHOLM)
    # 9xxxxx: far above what the session's orders reach; the counter keeps them unique within the session.
    ref = f"RO-{now.year}-{900000 + next(_STORED):06d}"
    row: dict[str, Any] = {
        "reference": ref, "order_type": "seal_or_lock", "initiative": "care", "actions": ["seal_journal"],
        "patient_pnr": pnr().replace("-", ""), "care_unit_hsa_id": unit, "region": region, "status": status,
        "submitted_by": submitted_by, "created_at": now, "updated_at": now, "due_at": now + timedelta(days=1),
        "reason": "Hot mot patienten",
        "stage_plan": {"approval": {"required": True, "role": "head_of_department",
                                    "reason": "Verksamhetschefen för den beställande vårdenheten godkänner."}},
        "flow_name": "seal-or-lock", "flow_run_id": f"00000000-0000-4000-8000-{next(_STORED):012d}", **fields}
    with ad.db.session() as s:
        s.add(Order(**row))
    return ref
