"""Hostile input against the form app, fuzzed with Hypothesis (no Prefect server, no flow runs).

Three promises, checked over generated input:
1. No 5xx for any body, content type, header or path a client can send; every 4xx of the JSON API has the
   contract's error shape (`{"errors": [{"field", "code", "message"}]}`) with a Swedish message.
2. Nothing invalid is stored: an order row appears only when the API answered 201, and a stored order passes
   the rule engine again (normalised personal numbers, known unit and region, reason within its limit).
3. Markup in every free-text field is inert: escaped in the HTML pages, printed as text in the paper PDF,
   and never in an email at all (emails carry the reference only; free text stays in the orders database).
Answers never echo a personal-number-shaped string from the input.

The module has its own orders database (references from 800000) and the in-process engine
(flows/inprocess.py) instead of Prefect: an accepted order's run goes as far as it can inside the request
(to its first human stage), and a decision's run takes it on, so what was accepted also goes through the
routine's steps, its pages and its emails.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from flows.inprocess import FakeRun, InProcessEngine
from models import personnummer
from models.calendar import local
from models.clock import STOCKHOLM
from models.routine import StagePlan, first_status
from models.schemas import ORDER_TYPES, REASON_MAX
from models.status import OrderStatus
from models.tables import Decision, Order, OutboxMessage
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings
from tasks.steps import orders
from tests.conftest import own_database
from tests.e2e import mails, text_of
from tests.webapp import PATIENT, body, born_years_ago, pnr, staff, stored_order, today

CLINICIAN = staff("clinician")
CLINICIAN2 = staff("clinician2")
ASSESSOR = staff("assessor")
HEAD = staff("head")
ONCALL = staff("oncall")
SUPPORT = staff("support")
ACCOUNTADMIN = staff("accountadmin")
ADMIN = "DEMO-ADMIN"
YEAR = datetime.now(STOCKHOLM).year
FIRST_REFERENCE = 800000

SUBMIT, VALIDATE = "/api/orders", "/api/orders/validate"
ORDER_FIELDS = ("order_type", "initiative", "actions", "patient_personal_number", "patient_protected_identity",
                "guardian_personal_number", "minor_access", "identity_checked_in_person", "urgent", "reason",
                "care_unit_hsa_id", "region", "callback_phone")
# The free-text field of each human step (POST /api/orders/{reference}/<step>).
STEP_TEXT = {"assessment": "rationale", "approval": "comment", "callback": "note", "execution": "system_reference",
             "cancel": "reason"}

PNR_SHAPE = re.compile(r"(?<![0-9])(?:[0-9]{6}|[0-9]{8})[-+]?[0-9]{4}(?![0-9])")
# FastAPI's, Starlette's and pydantic's own English texts must never reach a client.
ENGLISH = re.compile(r"Field required|Input should|Not Found|Method Not Allowed|There was an error|Internal Server"
                     r"|Unprocessable|Extra inputs|value is not|Expecting value|JSON decode", re.IGNORECASE)
SWEDISH = re.compile(r"[åäöÅÄÖ]|\b(?:Ogiltig|Ogiltigt|Skicka|Ange|Välj|ska|finns|inte|Sidan)\b")

MARKUP = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&"

FUZZ: dict[str, Any] = {"deadline": None, "database": None,
                        "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                  HealthCheck.data_too_large, HealthCheck.large_base_example]}


# --- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """An orders database of this module's own (SQLite file, or a PostgreSQL schema when DATABASE_URL is
    postgres)."""
    yield from own_database(tmp_path_factory, "hostile", first_reference=FIRST_REFERENCE)


@pytest.fixture(scope="module")
def ad(settings: Settings, db: Database, smtp: Path) -> Adapters:
    """This module's adapters: its own database, the in-process engine, the session's SMTP server (running, so
    the emails the routine sends reach it)."""
    from flows.bootstrap import in_process
    return in_process(settings, db=db)


@pytest.fixture(scope="module")
def client(ad: Adapters) -> Iterator[TestClient]:
    """The app as the trusted SSO proxy on loopback would reach it, with the in-process engine."""
    from forms.app import create_app
    # raise_server_exceptions=False: a crash is seen as the 500 a client gets (the app logs the traceback).
    with TestClient(create_app(ad), client=("127.0.0.1", 40000), raise_server_exceptions=False) as c:
        c.headers["X-Remote-User"] = CLINICIAN
        yield c


@pytest.fixture(scope="module")
def csrf(client: TestClient) -> str:
    """The form token of the client's session cookie (HTML form posts need it, also behind the SSO proxy)."""
    page = client.get("/")
    m = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert page.status_code == 200 and m, page.text[:500]
    return m.group(1)


def as_(user: str) -> dict[str, str]:
    return {"X-Remote-User": user}


# --- helpers ------------------------------------------------------------------------------------------

def order_count(ad: Adapters) -> int:
    with ad.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Order)) or 0)


def stored(ad: Adapters, reference: str) -> Order:
    with ad.db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == reference))
        assert order is not None, reference
        s.expunge(order)
        return order


def assert_error_shape(r: httpx.Response) -> None:
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.headers, r.text[:300])
    data = r.json()
    assert isinstance(data, dict) and isinstance(data.get("errors"), list) and data["errors"], data
    for e in data["errors"]:
        assert isinstance(e, dict) and {"field", "code", "message"} <= set(e), e
        assert all(isinstance(e[k], str) for k in ("field", "code", "message")) and e["code"] and e["message"], e
        assert SWEDISH.search(e["message"]) and not ENGLISH.search(e["message"]), e


def assert_no_echo(sent: str, r: httpx.Response, page: str = "", kept_in_fields: bool = False) -> None:
    """No personal-number-shaped string of the request comes back (it may be a real person's number).
    `page`: the page as it is without any input (a form shows 19121212-1212 as its example).
    `kept_in_fields`: the order form shown again to the person who typed it keeps what they typed in its
    fields (so they can correct it); anywhere else on the page is still an echo."""
    if r.headers.get("content-type", "").startswith("application/pdf"):
        return  # a PDF is only ever of an existing order; its own numbers are not the input's
    answer = r.content.decode("utf-8", "replace")
    if kept_in_fields:
        answer = re.sub(r' value="[^"]*"', ' value=""', answer)
        answer = re.sub(r"(<textarea[^>]*>)[^<]*(</textarea>)", r"\1\2", answer)
    for shaped in set(PNR_SHAPE.findall(sent)) - set(PNR_SHAPE.findall(page)):
        assert shaped not in answer, (shaped, r.status_code, answer[:500])


def as_request(o: Order) -> dict[str, Any]:
    """The stored order as a request body again, for a second pass through the rule engine."""
    raw: dict[str, Any] = {
        "order_type": o.order_type, "initiative": o.initiative, "actions": list(o.actions or []),
        "patient_personal_number": o.patient_pnr, "patient_protected_identity": o.patient_protected,
        "guardian_personal_number": o.guardian_pnr, "identity_checked_in_person": o.identity_checked,
        "urgent": o.urgent, "reason": o.reason, "care_unit_hsa_id": o.care_unit_hsa_id, "region": o.region}
    if o.order_type == "minor_access":
        raw["minor_access"] = {"grant": o.minor_grant, "recipient": o.minor_recipient, "child_consent": o.child_consent}
    return raw


def run_of(ad: Adapters, reference: str) -> FakeRun | None:
    assert isinstance(ad.engine, InProcessEngine)
    return ad.engine.run_of(reference)


def assert_stored_order_is_valid(ad: Adapters, c: TestClient, reference: str, by: str | None = CLINICIAN) -> None:
    """`by`: who must be the submitter (None: anyone in the staff directory, as for a paper order's orderer)."""
    o = stored(ad, reference)
    # Nothing beyond what its run does on its own: it went from `submitted` to its plan's first human stage
    # and waits there for a person.
    assert o.status == first_status(StagePlan.from_json(o.stage_plan)) and o.order_type in ORDER_TYPES
    run = run_of(ad, reference)
    assert run is not None and run.state == "paused", run
    assert o.submitted_by == by if by is not None else re.fullmatch(r"DEMO-[A-Z]+-[A-Z0-9]+", o.submitted_by)
    assert isinstance(o.reason, str) and len(o.reason) <= REASON_MAX
    day = local(o.created_at).date()
    for number in (o.patient_pnr, o.guardian_pnr):
        if number is not None:  # stored normalised: 12 ASCII digits that parse to themselves
            assert re.fullmatch(r"[0-9]{12}", number), number
            assert personnummer.parse(number, day).digits == number
    again = orders.check(ad, as_request(o), o.created_at, o.submitted_by)  # as its orderer (own region)
    assert again.ok, [p.model_dump() for p in again.errors]
    assert again.order is not None and again.order.patient_personal_number == o.patient_pnr
    # What was stored can be shown: the JSON view (masked) and the HTML order page.
    reader = as_(CLINICIAN if by == CLINICIAN else ADMIN)  # the orderer, or someone who reads every order
    view = c.get(f"/api/orders/{reference}", headers=reader)
    assert view.status_code == 200 and view.json()["patient"] == personnummer.mask(o.patient_pnr), view.text
    page = c.get(f"/bestallningar/{reference}", headers=reader)
    assert page.status_code == 200, page.text[:300]
    assert_inert_html(page.text)


def post_body(c: TestClient, path: str, raw: bytes, content_type: bytes | None = b"application/json",
              user: str = CLINICIAN, headers: dict[str, bytes] | None = None) -> httpx.Response:
    h: dict[str, Any] = {"X-Remote-User": user, **(headers or {})}
    if content_type is not None:
        h["Content-Type"] = content_type
    return c.post(path, content=raw, headers=h)


def check_submit_answer(ad: Adapters, c: TestClient, path: str, sent: bytes, r: httpx.Response, before: int,
                        with_key: bool = False, by: str = CLINICIAN) -> None:
    """Promises 1 and 2 for one POST /api/orders(/validate) sent by `by`."""
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if path == SUBMIT:  # 200 (a replay) and 409 (a key used for another body) only with an Idempotency-Key
        allowed = {201, 413, 415, 422} | ({200, 409} if with_key else set())
    else:
        allowed = {200, 413, 415, 422}
    assert r.status_code in allowed, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert_error_shape(r)
    assert_no_echo(sent.decode("utf-8", "replace"), r)
    created = path == SUBMIT and r.status_code == 201
    assert order_count(ad) == before + int(created), (r.status_code, r.text[:300])
    if created:
        assert_stored_order_is_valid(ad, c, r.json()["reference"], by=by)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.active: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k.lower() for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.active.append(f"inline <script> {attrs}")
        if tag == "img" and dict(attrs).get("src") == "x":
            self.active.append(f"injected <img> {attrs}")
        self.active += [f"event handler {k} on <{tag}>" for k in names if k.startswith("on")]


def assert_inert_html(html: str) -> None:
    """Nothing a person typed became an element or attribute: no inline script, no on* handler, no injected img."""
    parser = _Tags()
    parser.feed(html)
    parser.close()
    assert not parser.active, parser.active
    assert "<script>alert" not in html and "<img src=x" not in html


def assert_shown_escaped(html: str, text: str) -> None:
    """The text is on the page, escaped (Jinja's autoescape: & < > \" ')."""
    escaped = (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               .replace('"', "&#34;").replace("'", "&#39;"))
    assert escaped in html, (text, html[:2000])
    assert_inert_html(html)


def pdf_text(data: bytes) -> str:
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:]
    out = subprocess.run(["pdftotext", "-", "-"], input=data, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode("utf-8")


def assert_pdf_has_no_active_content(data: bytes) -> None:
    from pypdf import PdfReader
    from pypdf.generic import DictionaryObject
    reader = PdfReader(io.BytesIO(data), strict=True)
    assert len(reader.pages) >= 1
    root = reader.trailer["/Root"].get_object()
    assert isinstance(root, DictionaryObject)
    assert "/OpenAction" not in root and "/AA" not in root and "/AcroForm" not in root, root
    names = root.get("/Names")
    assert names is None or "/JavaScript" not in names.get_object()
    for page in reader.pages:
        assert "/AA" not in page
        for annot in page.get("/Annots") or []:
            action = annot.get_object().get("/A")
            if action is None:
                continue
            action = action.get_object()
            assert action.get("/S") not in ("/JavaScript", "/Launch", "/SubmitForm", "/ImportData"), action
            assert not str(action.get("/URI", "")).lower().strip().startswith(("javascript:", "data:", "file:"))


def assert_not_in_emails(ad: Adapters, refs: list[str], maildir: Path, markers: list[str]) -> int:
    """Emails about these orders (outbox rows and what the SMTP server received) carry no free text."""
    with ad.db.session() as s:
        rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference.in_(refs))))
    texts = [f"{m.subject}\n{m.body_text}\n{m.body_html}" for m in rows]
    texts += [text_of(m) for ref in refs for m in mails(maildir, ref)]
    for text in texts:
        assert "<script" not in text.lower() and "<img src=x" not in text and "onerror" not in text, text
        for marker in markers:
            assert marker not in text, (marker, text)
        assert not PNR_SHAPE.search(text), text
    for m in rows:
        assert_inert_html(m.body_html)
    return len(rows)


# --- strategies ---------------------------------------------------------------------------------------

def _pnr_forms(p: str) -> list[str]:
    digits = p.replace("-", "")
    return [p, digits, p[2:], digits[2:], f"{p[2:8]}+{p[9:]}"]


personal_numbers = st.one_of(
    st.just(PATIENT),
    st.builds(lambda born, serial, form: _pnr_forms(pnr(born, serial))[form],
              st.dates(min_value=datetime(1900, 1, 1).date(), max_value=born_years_ago(1)),
              st.integers(1, 999), st.integers(0, 4)),
)
odd_chars = st.characters(categories=["Cs", "Cc", "Cf", "Co", "Zs", "Zl", "Mn", "Nd", "So"])
hostile_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=odd_chars, max_size=12),
    # One lone surrogate or control character in otherwise ordinary text (JSON can carry both: "\ud800").
    st.builds(lambda a, odd, b: a + odd + b, st.text(max_size=3),
              st.characters(categories=["Cs", "Cc"]), st.text(max_size=3)),
    st.builds(lambda a, p, b: a + p + b, st.text(max_size=4), personal_numbers, st.text(max_size=4)),
    st.sampled_from([
        "", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "\u202eevil", "\ufeff", "\u200b", "null", "NaN",
        MARKUP, "{{7*7}}", "${7*7}", "' OR '1'='1' --", "%s%s%n", "../../../etc/passwd", "\r\nBcc: x@x.invalid",
        "١٩١٢١٢١٢-١٢١٢", "１９１２１２１２-１２１２", f"{PATIENT}\n", f" {PATIENT} ", "19121212–1212",
        f"{PATIENT}\x00", "DEMO-KALMAR-UNIT\x00", " demo-kalmar-unit ", "DEMO-KALMAR-UNİT", "KALMAR", "kalmar ",
        "seal_or_lock\u200b", "care\x00", "guardian ", "ＲＯ-2026-800001",
    ]),
)
long_text = st.one_of(
    st.integers(REASON_MAX - 1, REASON_MAX + 1).map(lambda n: "å" * n),
    st.integers(REASON_MAX - 1, REASON_MAX + 1).map(lambda n: "\U0001f600" * n),   # astral: 2 UTF-16 units each
    st.integers(REASON_MAX - 1, REASON_MAX + 1).map(lambda n: "e\u0301" * (n // 2)),  # combining marks
    st.just("x" * 70_000),                                                         # over the 64 KiB body limit
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.sampled_from([10**400, -(10**300)]), st.floats(), hostile_text)
json_keys = st.one_of(st.sampled_from([*ORDER_FIELDS, "grant", "recipient", "child_consent", "__proto__"]),
                      st.text(max_size=8), st.text(alphabet=odd_chars, max_size=3))
json_values = st.recursive(json_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(json_keys, kids, max_size=6)), max_leaves=16)


def encode(value: Any, ascii_only: bool) -> bytes:
    # ensure_ascii sends lone surrogates as \ud800 escapes; otherwise as the raw (invalid UTF-8) bytes a
    # broken client would send. NaN and Infinity go out as Python writes them (Python reads them back).
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def valid_body(order_type: str, serial: int) -> dict[str, Any]:
    """A body the API accepts, with personal numbers made here (fresh serial from Hypothesis)."""
    b = body(order_type, patient_personal_number=pnr(born_years_ago(14 if order_type == "minor_access" else 40),
                                                     serial))
    if order_type == "block_guardian":
        b["guardian_personal_number"] = pnr(born_years_ago(45), (serial + 1) % 1000 or 1)
    if order_type == "restore_access":
        b["initiative"] = "care"
    return b


def replace_field(b: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    b = json.loads(json.dumps(b))
    if field == "extra":
        b["unexpected"] = value
    elif field.startswith("minor_access."):
        b.setdefault("minor_access", {"grant": True, "recipient": "minor"})
        b["minor_access"][field.split(".", 1)[1]] = value
    elif field == "actions[]":
        b["actions"] = ["seal_journal", value]
    elif field.startswith("-"):  # the field left out altogether
        b.pop(field[1:], None)
    else:
        b[field] = value
    return b


# --- 1 and 2: bodies of POST /api/orders and /api/orders/validate ---------------------------------------

@settings(max_examples=120, **FUZZ)
@given(path=st.sampled_from([SUBMIT, VALIDATE]),
       raw=st.builds(encode, st.one_of(json_values, st.dictionaries(json_keys, json_values, max_size=14)),
                     st.booleans()))
def test_any_json_body_is_answered_without_5xx_and_stores_nothing_invalid(ad: Adapters, client: TestClient,
                                                                         path: str, raw: bytes) -> None:
    before = order_count(ad)
    r = post_body(client, path, raw)
    check_submit_answer(ad, client, path, raw, r, before)


@settings(max_examples=25, **FUZZ)
@given(path=st.sampled_from([SUBMIT, VALIDATE]), depth=st.integers(1, 30_000),
       shape=st.sampled_from([("[", "]"), ('{"a":[', "]}"), ('{"reason":', "}")]))
@example(path=SUBMIT, depth=5000, shape=("[", "]"))  # valid JSON of 10 kB, far below the 64 KiB limit
def test_deeply_nested_json(ad: Adapters, client: TestClient, path: str, depth: int,
                            shape: tuple[str, str]) -> None:
    opener, closer = shape
    raw = (opener * depth + ("1" if opener.endswith(":") else "") + closer * depth).encode()
    before = order_count(ad)
    r = post_body(client, path, raw)
    check_submit_answer(ad, client, path, raw, r, before)


@settings(max_examples=150, **FUZZ)
@given(path=st.sampled_from([SUBMIT, VALIDATE]), order_type=st.sampled_from(ORDER_TYPES),
       serial=st.integers(1, 999),
       field=st.sampled_from([*ORDER_FIELDS, "minor_access.grant", "minor_access.recipient",
                              "minor_access.child_consent", "actions[]", "extra", *(f"-{f}" for f in ORDER_FIELDS)]),
       value=st.one_of(hostile_text, json_values, long_text), ascii_only=st.booleans())
@example(path=SUBMIT, order_type="seal_or_lock", serial=123, field="reason", value="\ud800", ascii_only=True)
def test_valid_body_with_one_hostile_field(ad: Adapters, client: TestClient, path: str, order_type: str, serial: int,
                                           field: str, value: Any, ascii_only: bool) -> None:
    raw = encode(replace_field(valid_body(order_type, serial), field, value), ascii_only)
    before = order_count(ad)
    r = post_body(client, path, raw)
    check_submit_answer(ad, client, path, raw, r, before)


@settings(max_examples=60, **FUZZ)
@given(path=st.sampled_from([SUBMIT, VALIDATE]),
       raw=st.one_of(st.binary(max_size=200), st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
                     st.just(json.dumps(valid_body("seal_or_lock", 7)).encode("utf-16"))),  # valid, in UTF-16
       content_type=st.one_of(
           st.none(),
           st.sampled_from([b"application/json", b"application/json; charset=latin-1", b"APPLICATION/JSON",
                            b"application/problem+json", b"text/plain", b"application/x-www-form-urlencoded",
                            b"multipart/form-data; boundary=x", b"", b"application/json\x00", b"*/*"]),
           st.binary(max_size=40).filter(lambda v: b"\n" not in v and b"\r" not in v)))
def test_non_json_bytes_and_content_types(ad: Adapters, client: TestClient, path: str, raw: bytes,
                                          content_type: bytes | None) -> None:
    before = order_count(ad)
    r = post_body(client, path, raw, content_type)
    check_submit_answer(ad, client, path, raw, r, before)


PRINT = "/api/paper-forms/{}.pdf"
PRINT_FIELDS = ("patient_personal_number", "guardian_personal_number", "reason", "care_unit_hsa_id", "initiative",
                "actions", "urgent", "patient_protected_identity", "minor_access_grant", "minor_access_recipient")


@st.composite
def print_requests(draw: st.DrawFn) -> tuple[str, bytes, bytes | None]:
    """(order type in the path, body, content type): JSON as a submit gets it, or the order form's own post."""
    order_type = draw(st.one_of(st.sampled_from(ORDER_TYPES), st.sampled_from(["", "x", "seal_or_lock.pdf", "%00"])))
    kind = draw(st.sampled_from(["json", "one-field", "form", "bytes"]))
    if kind == "json":
        raw = encode(draw(st.one_of(json_values, st.dictionaries(json_keys, json_values, max_size=14))),
                     draw(st.booleans()))
        return order_type, raw, b"application/json"
    if kind == "one-field":  # a valid body with one field replaced; the body is made in the test (its serial)
        field = draw(st.sampled_from([*ORDER_FIELDS, "extra", *(f"-{f}" for f in ORDER_FIELDS)]))
        value = draw(st.one_of(hostile_text, json_values, long_text))
        return order_type, encode({"field": field, "value": value}, draw(st.booleans())), None
    if kind == "form":
        pairs = draw(st.lists(st.tuples(st.one_of(st.sampled_from(PRINT_FIELDS), st.text(max_size=8)),
                                        st.one_of(hostile_text, st.text(max_size=300))), max_size=8))
        return order_type, query_string(pairs).encode(), b"application/x-www-form-urlencoded"
    return order_type, draw(st.binary(max_size=200)), draw(st.sampled_from(
        [None, b"text/plain", b"application/json", b"multipart/form-data; boundary=x", b"application/json\x00"]))


@settings(max_examples=50, **FUZZ)
@given(request=print_requests())
@example(request=("seal_or_lock", encode(valid_body("seal_or_lock", 5), True), b"application/json"))
def test_hostile_print_bodies(ad: Adapters, client: TestClient, csrf: str,
                              request: tuple[str, bytes, bytes | None]) -> None:
    """POST /api/paper-forms/{type}.pdf (print what was typed, store nothing): no 5xx, nothing stored, a
    refusal in the contract's shape, a PDF without active content."""
    order_type, raw, content_type = request
    if content_type is None and raw.startswith(b'{"field"'):
        change = json.loads(raw.decode("utf-8", "surrogatepass"))
        valid = valid_body(order_type if order_type in ORDER_TYPES else "seal_or_lock", 17)
        raw, content_type = encode(replace_field(valid, change["field"], change["value"]), True), b"application/json"
    if content_type == b"application/x-www-form-urlencoded":
        raw += b"&csrf_token=" + csrf.encode()
    before = order_count(ad)
    r = post_body(client, PRINT.format(quote(order_type, safe="")), raw, content_type)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    # 400: a multipart body that is not one (the form parser's refusal, in the contract's shape)
    assert r.status_code in {200, 400, 403, 404, 413, 415, 422}, (r.status_code, r.text[:500])
    assert order_count(ad) == before
    if r.status_code == 200:
        assert r.headers["content-type"] == "application/pdf"
        assert_pdf_has_no_active_content(r.content)
        return
    if r.headers.get("content-type", "").startswith("text/html"):  # the order form, shown again with its errors
        assert_inert_html(r.text)
    elif r.request.url.path.startswith("/api/"):
        assert_error_shape(r)
    assert_no_echo(raw.decode("utf-8", "replace"), r, client.get(f"/bestall/{order_type}").text
                   if order_type in ORDER_TYPES else "",
                   kept_in_fields=content_type == b"application/x-www-form-urlencoded")


@settings(max_examples=30, **FUZZ)
@given(key=st.one_of(st.binary(min_size=1, max_size=200).filter(lambda v: b"\n" not in v and b"\r" not in v),
                     st.from_regex(rb"\A[\x21-\x7e]{1,120}\Z")),
       serial=st.integers(1, 999))
def test_hostile_idempotency_key(ad: Adapters, client: TestClient, key: bytes, serial: int) -> None:
    raw = encode(valid_body("seal_or_lock", serial), True)
    before = order_count(ad)
    first = post_body(client, SUBMIT, raw, headers={"Idempotency-Key": key})
    check_submit_answer(ad, client, SUBMIT, raw, first, before, with_key=True)
    if first.status_code in (200, 201):  # the same key and body again: the first answer, nothing new
        again = post_body(client, SUBMIT, raw, headers={"Idempotency-Key": key})
        assert again.status_code == 200 and again.json()["reference"] == first.json()["reference"], again.text
        other = encode(valid_body("seal_or_lock", serial % 999 + 1), True)
        conflict = post_body(client, SUBMIT, other, headers={"Idempotency-Key": key})
        assert conflict.status_code == 409, conflict.text
        assert_error_shape(conflict)
        assert order_count(ad) == before + int(first.status_code == 201)


# --- 1: path parameters -------------------------------------------------------------------------------

def _existing(n: int, form: int) -> str:
    ref = f"RO-{YEAR}-{FIRST_REFERENCE + n:06d}"
    return [ref, ref.lower(), f"  {ref}\t", ref.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
            f"{ref}\x00", f"{ref}/../{ref}", ref + "0" * 12][form]


references = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=odd_chars, max_size=12),
    st.builds(lambda a, p, b: a + p + b, st.text(max_size=5), personal_numbers, st.text(max_size=5)),
    st.builds(lambda p: f"RO-{YEAR}-{p}", personal_numbers),
    st.from_regex(r"\A\s?[Rr][Oo]-[0-9]{4}-[0-9]{6,10}\s?\Z"),
    st.builds(_existing, st.integers(1, 40), st.integers(0, 6)),
    st.sampled_from([".", "..", "", "%", "%00", "?x=1", "#", "\\", "RO-2026-" + "9" * 5000]),
)
STEP_BODIES: dict[str, dict[str, Any]] = {
    "assessment": {"harm_found": True, "decision": "restrict", "rationale": "Risk för men", "review_after_days": 365},
    "approval": {"approved": True, "comment": ""}, "callback": {"note": ""},
    "execution": {"system_reference": "ADM-1"}, "cancel": {"reason": ""},
}
ENDPOINTS: list[tuple[str, str, str, dict[str, Any] | None]] = [  # method, path template, user, JSON body
    ("GET", "/api/orders/{}", CLINICIAN, None),
    ("GET", "/api/orders/{}/paper.pdf", SUPPORT, None),
    ("GET", "/api/orders/{}/callback-clock", SUPPORT, None),
    ("POST", "/api/orders/{}/assessment", ASSESSOR, STEP_BODIES["assessment"]),
    ("POST", "/api/orders/{}/approval", HEAD, STEP_BODIES["approval"]),
    ("POST", "/api/orders/{}/callback", ONCALL, STEP_BODIES["callback"]),
    ("POST", "/api/orders/{}/execution", ACCOUNTADMIN, STEP_BODIES["execution"]),
    ("POST", "/api/orders/{}/cancel", CLINICIAN2, STEP_BODIES["cancel"]),
    ("POST", "/api/orders/{}/urgent", ONCALL, None),
    ("GET", "/bestallningar/{}", CLINICIAN, None),
    ("GET", "/bestallningar/{}/kvitto", CLINICIAN, None),
    ("FORM", "/ko/menprovning/{}", ASSESSOR, {"harm_found": "yes", "decision": "restrict", "rationale": ""}),
    ("POST", "/api/orders/{}/review", HEAD, {"outcome": "keep"}),
    ("POST", "/api/orders/{}/resume-digital", SUPPORT, None),
    ("GET", "/api/paper-forms/{}.pdf", CLINICIAN, None),  # the order type in the path, any text at all
    ("FORM", "/omprovningar/{}", HEAD, {"outcome": "keep"}),
]


@settings(max_examples=150, **FUZZ)
@given(endpoint=st.sampled_from(ENDPOINTS), ref=references)
@example(endpoint=ENDPOINTS[-1], ref=PATIENT)  # a personal number pasted where the reference goes
@example(endpoint=next(e for e in ENDPOINTS if e[1].endswith("/review")), ref="%00")  # was a 500 on PostgreSQL
def test_path_references_never_5xx_and_never_echo_a_personal_number(client: TestClient, csrf: str,
                                                                    endpoint: tuple[str, str, str, Any],
                                                                    ref: str) -> None:
    method, template, user, payload = endpoint
    path = template.format(quote(ref, safe="", errors="surrogatepass"))
    if method == "GET":
        r = client.get(path, headers=as_(user))
    elif method == "FORM":
        r = client.post(path, data={**payload, "csrf_token": csrf}, headers=as_(user))
    else:
        r = client.post(path, json=payload, headers=as_(user))
    assert r.status_code < 500, (r.status_code, r.text[:500])
    # The path as sent: the client resolves dot segments (/api/orders/.. is /api, a page's address).
    if r.request.url.path.startswith("/api/") and 400 <= r.status_code < 500:
        assert_error_shape(r)
    if r.headers.get("content-type", "").startswith("text/html"):
        assert_inert_html(r.text)
    assert_no_echo(ref, r)


# --- 1 and 2: bodies of the human steps ---------------------------------------------------------------

def submitted(c: TestClient, user: str = CLINICIAN, **extra: Any) -> str:
    r = c.post(SUBMIT, json=body("seal_or_lock", **extra), headers=as_(user))
    assert r.status_code == 201, r.text
    return str(r.json()["reference"])


STEP_USERS = {"assessment": ASSESSOR, "approval": HEAD, "callback": ONCALL, "execution": ACCOUNTADMIN,
              "cancel": CLINICIAN}
STEP_STAGE = {"assessment": "harm_assessment", "approval": "approval", "callback": "callback",
              "execution": "execution", "cancel": "cancel"}
WAITS_IN = {"assessment": OrderStatus.AWAITING_ASSESSMENT, "approval": OrderStatus.AWAITING_APPROVAL,
            "callback": OrderStatus.AWAITING_CALLBACK, "execution": OrderStatus.EXECUTING,
            "cancel": OrderStatus.AWAITING_ASSESSMENT}
ASSESSED = {"harm_found": True, "decision": "restrict", "rationale": "Risk för men", "review_after_days": 365}


def waiting_for(ad: Adapters, c: TestClient, step: str) -> str:
    """A fresh order waiting for `step`, as its run leaves it."""
    # The simulated registry executes without a person, so no run ever waits for a manual execution: for
    # that step, the order row as such a run would leave it, with a run id the engine does not know.
    ref = stored_order(ad, "executing") if step == "execution" else submitted(c, urgent=step == "callback")
    if step == "approval":
        r = c.post(f"/api/orders/{ref}/assessment", json=ASSESSED, headers=as_(ASSESSOR))
        assert r.status_code == 202, r.text
    assert stored(ad, ref).status == WAITS_IN[step], (step, stored(ad, ref).status)
    return ref


@st.composite
def step_requests(draw: st.DrawFn) -> tuple[str, Any]:
    """(step, JSON body): a valid body with a hostile text or field, or any JSON value at all."""
    step = draw(st.sampled_from(sorted(STEP_BODIES)))
    b: Any = dict(STEP_BODIES[step])
    kind = draw(st.sampled_from(["text", "field", "any"]))
    if kind == "text":
        b[STEP_TEXT[step]] = draw(st.one_of(hostile_text, long_text))
    elif kind == "field":
        b[draw(st.sampled_from([*sorted(b), "extra"]))] = draw(json_values)
    else:
        b = draw(json_values)
    return step, b


def decisions_of(ad: Adapters, reference: str, stage: str) -> list[str]:
    with ad.db.session() as s:
        return list(s.scalars(select(Decision.text).join(Order).where(Order.reference == reference,
                                                                       Decision.stage == stage)
                              .order_by(Decision.id)))


@settings(max_examples=70, **FUZZ)
@given(request=step_requests(), ascii_only=st.booleans())
@example(request=("callback", {"note": "\ud800"}), ascii_only=True)
@example(request=("cancel", {"reason": "\x00"}), ascii_only=True)  # PostgreSQL text cannot hold NUL
def test_hostile_step_bodies(ad: Adapters, client: TestClient, request: tuple[str, Any], ascii_only: bool) -> None:
    """Each example on a fresh order waiting for that step, so every valid body gets as far as the database."""
    step, payload = request
    ref = waiting_for(ad, client, step)
    status_before = stored(ad, ref).status
    raw = encode(payload, ascii_only)
    r = post_body(client, f"/api/orders/{ref}/{step}", raw, user=STEP_USERS[step])
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert r.status_code in (200, 202, 400, 413, 422), (r.status_code, r.text[:300])
    assert_no_echo(raw.decode("utf-8", "replace"), r)
    texts = decisions_of(ad, ref, STEP_STAGE[step])
    if r.status_code >= 400:
        assert_error_shape(r)
        assert texts == [] and stored(ad, ref).status == status_before  # nothing stored, nothing moved
    else:
        assert len(texts) <= 1 and all(isinstance(t, str) and len(t) <= REASON_MAX for t in texts), texts
        field = STEP_TEXT[step]
        if step != "execution" and payload.get(field):  # the system reference is kept in the decision's detail
            assert texts == [payload[field]]
    if step != "execution":  # whatever was accepted, the order's run took it without failing
        run = run_of(ad, ref)
        assert run is not None and run.state in ("paused", "completed", "cancelled"), run
    page = client.get(f"/bestallningar/{ref}", headers=as_(CLINICIAN))
    assert page.status_code == 200
    assert_inert_html(page.text)


# --- 3: markup is inert -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pdftotext() -> str:
    tool = shutil.which("pdftotext")
    assert tool, "poppler-utils (pdftotext) is needed"
    return tool


def test_markup_in_the_reason_is_text_on_pages_and_in_the_pdf(ad: Adapters, client: TestClient,
                                                              pdftotext: str) -> None:
    ref = submitted(client, reason=MARKUP)
    assert stored(ad, ref).reason == MARKUP  # stored as typed: escaping is the job of each output
    for path, user in [(f"/bestallningar/{ref}", CLINICIAN), (f"/bestallningar/{ref}", ADMIN),
                       (f"/bestallningar/{ref}/kvitto", CLINICIAN), ("/bestallningar", CLINICIAN)]:
        page = client.get(path, headers=as_(user))
        assert page.status_code == 200, (path, page.text[:300])
        assert_inert_html(page.text)
    assert_shown_escaped(client.get(f"/bestallningar/{ref}", headers=as_(CLINICIAN)).text, MARKUP)
    assert "&lt;script&gt;" in client.get(f"/bestallningar/{ref}").text

    pdf = client.get(f"/api/orders/{ref}/paper.pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf", pdf.text[:300]
    assert_pdf_has_no_active_content(pdf.content)
    text = pdf_text(pdf.content)
    flat = re.sub(r"\s+", "", text)
    assert re.sub(r"\s+", "", MARKUP) in flat, text  # printed as the characters typed
    assert "&lt;" not in text and "&amp;" not in text and "&#" not in text, text  # not escaped twice


@settings(max_examples=40, **FUZZ)
@given(reason=st.one_of(hostile_text, st.text(min_size=1, max_size=REASON_MAX),
                        st.sampled_from(["å" * REASON_MAX, "\U0001f600" * REASON_MAX, "e\u0301" * (REASON_MAX // 2),
                                         "W" * REASON_MAX, "\u202e" + "x" * 50, "\t\x0b\x0c\x1b[31m"])),
       ascii_only=st.booleans())
@example(reason="\x00", ascii_only=True)   # PostgreSQL text cannot hold NUL
@example(reason="\ud800", ascii_only=True)  # a lone surrogate: valid JSON, not a valid string for pydantic
def test_any_reason_is_checked_stored_and_rendered(ad: Adapters, client: TestClient, reason: str,
                                                   ascii_only: bool) -> None:
    """Whatever the reason text, validate and submit agree, and a stored reason shows on pages, in the PDF and
    in the assessment queue. In Region Jönköping, which the other tests leave alone: its queue holds only
    these orders (Kalmar's holds every order the fuzz tests left waiting, more than a queue page shows)."""
    clinician = staff("clinician", "jonkoping")
    raw = encode(body("seal_or_lock", reason=reason, region="jonkoping", care_unit_hsa_id="DEMO-JONKOPING-UNIT"),
                 ascii_only)
    check = post_body(client, VALIDATE, raw, user=clinician)
    check_submit_answer(ad, client, VALIDATE, raw, check, order_count(ad), by=clinician)
    before = order_count(ad)
    r = post_body(client, SUBMIT, raw, user=clinician)
    check_submit_answer(ad, client, SUBMIT, raw, r, before, by=clinician)
    assert (check.status_code == 200) == (r.status_code == 201), (check.text, r.text)  # validate tells the truth
    if r.status_code != 201:
        return
    ref = r.json()["reference"]
    pdf = client.get(f"/api/orders/{ref}/paper.pdf", headers=as_(clinician))
    assert pdf.status_code == 200, pdf.text[:300]
    assert_pdf_has_no_active_content(pdf.content)
    pdf_text(pdf.content)
    queue_page = client.get("/ko/menprovning", headers=as_(staff("assessor", "jonkoping")))
    assert queue_page.status_code == 200 and f'id="{ref}"' in queue_page.text
    assert_inert_html(queue_page.text)


def test_markup_in_every_step_text_is_inert_and_never_in_an_email(ad: Adapters, client: TestClient,
                                                                  smtp: Path) -> None:
    """reason, assessment rationale, approval comment, callback note, execution reference, cancel reason.

    In Region Stockholm, which the fuzz tests above leave alone: the queues show these orders, however many
    accepted orders those tests left waiting in Kalmar's (a queue shows the first QUEUE_LIMIT)."""
    def payload(tag: str) -> str:
        return f"<script>alert('{tag}')</script><img src=x onerror=alert(\"{tag}\")>&{tag}"

    who = {role: staff(role, "stockholm") for role in ("clinician", "assessor", "head", "oncall", "support",
                                                       "accountadmin")}
    tags = {f: f"zq{f}zq" for f in ("reason", "rationale", "comment", "note", "system_reference", "cancel")}
    here = {"region": "stockholm", "care_unit_hsa_id": "DEMO-STOCKHOLM-UNIT", "reason": payload(tags["reason"])}
    urgent_ref = submitted(client, user=who["clinician"], urgent=True, **here)     # pages on-call by email
    routine_ref = submitted(client, user=who["clinician"], **here)                 # confirmed by email when done
    cancel_ref = submitted(client, user=who["clinician"], **here)                  # emails the orderer
    # Nothing waits for a manual execution with the simulated registry: the row as that run would leave it.
    exec_ref = stored_order(ad, "executing", submitted_by=who["clinician"], unit="DEMO-STOCKHOLM-UNIT",
                            region="stockholm", reason=payload(tags["reason"]))
    refs = [urgent_ref, routine_ref, cancel_ref, exec_ref]

    answers = [client.post(f"/api/orders/{urgent_ref}/callback", json={"note": payload(tags["note"])},
                           headers=as_(who["oncall"]))]
    answers.append(client.post(f"/api/orders/{routine_ref}/assessment", headers=as_(who["assessor"]), json={
        "harm_found": True, "decision": "restrict", "rationale": payload(tags["rationale"]), "review_after_days": 30}))
    # The queue's rows hold no free text; the order page, where the assessor decides, shows the reason.
    order_page = client.get(f"/bestallningar/{routine_ref}", headers=as_(who["assessor"]))
    assert_shown_escaped(order_page.text, payload(tags["reason"]))
    assert stored(ad, routine_ref).status == OrderStatus.AWAITING_APPROVAL  # its run took the assessment
    answers.append(client.post(f"/api/orders/{routine_ref}/approval", headers=as_(who["head"]),
                               json={"approved": True, "comment": payload(tags["comment"])}))
    answers.append(client.post(f"/api/orders/{exec_ref}/execution", headers=as_(who["accountadmin"]),
                               json={"system_reference": payload(tags["system_reference"])}))
    answers.append(client.post(f"/api/orders/{cancel_ref}/cancel", headers=as_(who["clinician"]),
                               json={"reason": payload(tags["cancel"])}))
    assert [a.status_code for a in answers] == [202, 202, 202, 202, 200], [a.text for a in answers]
    assert stored(ad, routine_ref).status == OrderStatus.COMPLETED  # executed by the simulated registry

    with ad.db.session() as s:  # every text went in, as typed
        texts = set(s.scalars(select(Decision.text).join(Order).where(Order.reference.in_(refs))))
    assert {payload(tags[f]) for f in ("note", "rationale", "comment", "cancel")} <= texts, texts

    pages = [(f"/bestallningar/{r}", u) for r in refs for u in (who["clinician"], ADMIN, who["support"])]
    pages += [("/ko/aterringning", who["oncall"]), ("/ko/godkannande", who["head"]),
              ("/ko/verkstallande", who["accountadmin"]), ("/ko/menprovning", who["assessor"]),
              ("/bestallningar", who["clinician"])]
    for path, user in pages:
        page = client.get(path, headers=as_(user))
        assert page.status_code == 200, (path, user, page.status_code)
        assert_inert_html(page.text)
    for ref in refs:
        assert_shown_escaped(client.get(f"/bestallningar/{ref}", headers=as_(who["clinician"])).text,
                             payload(tags["reason"]))

    queued = assert_not_in_emails(ad, refs, smtp, list(tags.values()))
    # The page of the urgent order, the cancellation to the orderer, the confirmations of the executed one.
    assert queued >= 4, queued
    assert mails(smtp, urgent_ref) and mails(smtp, cancel_ref) and mails(smtp, routine_ref)  # and were sent


def test_markup_typed_into_the_html_forms_is_escaped_when_they_are_shown_again(ad: Adapters, client: TestClient,
                                                                               csrf: str) -> None:
    form = {"csrf_token": csrf, "initiative": "care", "actions": "seal_journal", "patient_personal_number": MARKUP,
            "care_unit_hsa_id": MARKUP + "u", "reason": MARKUP + "r", "idempotency_key": MARKUP}
    before = order_count(ad)
    page = client.post("/bestall/seal_or_lock", data=form, headers=as_(CLINICIAN))
    assert page.status_code == 422, page.text[:500]
    assert order_count(ad) == before
    assert_inert_html(page.text)  # the unknown care unit is not shown again (the field is a list of units)
    for value in (MARKUP, MARKUP + "r"):
        assert_shown_escaped(page.text, value)

    ref = waiting_for(ad, client, "assessment")
    page = client.post(f"/ko/menprovning/{ref}", headers=as_(ASSESSOR),
                       data={"csrf_token": csrf, "harm_found": "maybe", "rationale": MARKUP, "review_after_days": MARKUP})
    assert page.status_code == 422, page.text[:500]
    assert_shown_escaped(page.text, MARKUP)


# --- the fuzz table -----------------------------------------------------------------------------------------
# Every operation of /openapi.json and the tests in this module that send it hostile input. A new endpoint
# fails test_every_operation_in_openapi_is_fuzzed until it has a row here: add the row and, if no test
# below covers its inputs yet, a row to ENDPOINTS (path parameter), ADMIN_GETS (query), JSON_POSTS (body)
# or a test of its own.
PATHS, STEPS = "test_path_references_never_5xx_and_never_echo_a_personal_number", "test_hostile_step_bodies"
SUBMITS = ("test_any_json_body_is_answered_without_5xx_and_stores_nothing_invalid", "test_deeply_nested_json",
           "test_valid_body_with_one_hostile_field", "test_non_json_bytes_and_content_types")
QUERIES, POSTS = "test_hostile_query_parameters", "test_hostile_json_bodies_of_the_admin_and_review_posts"
FUZZED: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/api/orders"): (*SUBMITS, "test_hostile_idempotency_key", "test_any_reason_is_checked_stored_and_rendered"),
    ("POST", "/api/orders/validate"): SUBMITS,
    ("GET", "/api/orders/{reference}"): (PATHS,),
    ("POST", "/api/orders/{reference}/assessment"): (PATHS, STEPS),
    ("POST", "/api/orders/{reference}/approval"): (PATHS, STEPS),
    ("POST", "/api/orders/{reference}/callback"): (PATHS, STEPS),
    ("POST", "/api/orders/{reference}/execution"): (PATHS, STEPS),
    ("POST", "/api/orders/{reference}/cancel"): (PATHS, STEPS),
    ("GET", "/api/orders/{reference}/paper.pdf"): (PATHS, "test_markup_in_the_reason_is_text_on_pages_and_in_the_pdf"),
    ("GET", "/api/paper-forms/{order_type}.pdf"): (PATHS, QUERIES),
    ("POST", "/api/paper-forms/{order_type}.pdf"): ("test_hostile_print_bodies",),
    ("GET", "/healthz"): (QUERIES, "test_operations_without_a_body_ignore_whatever_is_sent"),
    ("POST", "/api/orders/{reference}/urgent"): (PATHS, "test_operations_without_a_body_ignore_whatever_is_sent"),
    ("GET", "/api/orders/{reference}/callback-clock"): (PATHS,),
    ("POST", "/api/paper-orders"): ("test_hostile_paper_order_bodies",),
    ("POST", "/api/orders/{reference}/resume-digital"): (PATHS, "test_operations_without_a_body_ignore_whatever_is_sent"),
    ("GET", "/api/admin/overview"): (QUERIES,),
    ("GET", "/api/admin/overdue"): (QUERIES,),
    ("GET", "/api/admin/deviations"): (QUERIES,),
    ("GET", "/api/admin/reviews"): (QUERIES,),
    ("GET", "/api/admin/orders.csv"): (QUERIES,),
    ("POST", "/api/admin/patient-log"): (POSTS,),
    ("POST", "/api/admin/sample-check"): (POSTS,),
    ("POST", "/api/orders/{reference}/review"): (PATHS, POSTS, "test_hostile_review_outcomes_store_nothing_invalid"),
    ("GET", "/api/queues/{stage}"): (QUERIES,),
    ("GET", "/api/admin/orders"): (QUERIES,),
    ("GET", "/api/admin/statistics"): (QUERIES,),
    ("GET", "/api/admin/statistics.csv"): (QUERIES,),
}
# Pages and form posts are not in /openapi.json; these are the monitoring ones fuzzed here.
PAGES: dict[tuple[str, str], tuple[str, ...]] = {
    ("GET", "/admin"): (QUERIES,), ("GET", "/admin/avvikelser"): (QUERIES,),
    ("GET", "/admin/omprovningar"): (QUERIES,), ("GET", "/omprovningar"): (QUERIES,),
    ("POST", "/omprovningar/{reference}"): (PATHS, "test_hostile_html_forms_of_the_monitoring_pages"),
    ("POST", "/admin/logg/patient"): ("test_hostile_html_forms_of_the_monitoring_pages",),
    ("POST", "/admin/logg/stickprov"): ("test_hostile_html_forms_of_the_monitoring_pages",),
}


def test_every_operation_in_openapi_is_fuzzed(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item
                  if method in ("get", "post", "put", "patch", "delete")}
    missing = sorted(operations - set(FUZZED))
    assert not missing, f"no hostile-input test for {missing}: add a row to FUZZED in tests/test_hostile_input.py"
    assert not set(FUZZED) - operations, sorted(set(FUZZED) - operations)  # rows of endpoints that are gone
    for name in {n for names in (*FUZZED.values(), *PAGES.values()) for n in names}:
        assert callable(globals().get(name)), f"FUZZED names {name}, which is not a test here"
    fuzzed_paths = {template for _, template, _, _ in ENDPOINTS}
    for method, path in [*FUZZED, *PAGES]:  # a row that claims the path test must have a row there
        if PATHS in (FUZZED.get((method, path)) or PAGES.get((method, path)) or ()):
            assert re.sub(r"\{[a-z_]+\}", "{}", path) in fuzzed_paths, path


# --- query parameters: admin lists and pages, the blank paper form, /healthz --------------------------------

def query_string(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='', errors='surrogatepass')}={quote(v, safe='', errors='surrogatepass')}"
                    for k, v in pairs)


VALID_QUERY_VALUES = ["kalmar", "STOCKHOLM", " ostergotland ", "submitted", "awaiting_approval", "overdue", "true",
                      "false", "1", "0", "", "keep", "restore", f"RO-{YEAR}-{FIRST_REFERENCE + 1:06d}", PATIENT]
ADMIN_GETS: list[tuple[str, str, tuple[str, ...]]] = [  # path, user, the parameters it reads
    ("/api/admin/overview", ADMIN, ("region", "status")),
    ("/api/admin/overdue", ADMIN, ("region", "status")),
    ("/api/admin/deviations", ADMIN, ("region",)),
    ("/api/admin/reviews", ADMIN, ("region",)),
    ("/api/admin/orders.csv", ADMIN, ("region", "status", "overdue")),
    ("/api/paper-forms/seal_or_lock.pdf", CLINICIAN, ("region",)),
    ("/api/paper-forms/minor_access.pdf", SUPPORT, ("region",)),
    ("/healthz", CLINICIAN, ("region",)),
    ("/admin", ADMIN, ("region", "status")),
    ("/admin/avvikelser", ADMIN, ("region",)),
    ("/admin/omprovningar", ADMIN, ("region",)),
    ("/omprovningar", HEAD, ("klar", "utfall")),
    ("/api/queues/harm_assessment", ASSESSOR, ("unit", "type")),
    ("/ko/menprovning", ASSESSOR, ("enhet", "typ", "klar")),
    ("/api/admin/orders", ADMIN, ("q", "region", "status", "urgent", "overdue", "offset")),
    ("/api/admin/statistics", ADMIN, ("region", "from", "to")),
    ("/api/admin/statistics.csv", ADMIN, ("region", "from", "to")),
    ("/admin/bestallningar", ADMIN, ("q", "region", "status", "urgent", "overdue")),
    ("/admin/statistik", ADMIN, ("region", "from", "to")),
]


@st.composite
def queries(draw: st.DrawFn) -> tuple[tuple[str, str, tuple[str, ...]], list[tuple[str, str]]]:
    endpoint = draw(st.sampled_from(ADMIN_GETS))
    keys = st.one_of(st.sampled_from([*endpoint[2], "x"]), st.text(max_size=6))
    values = st.one_of(st.sampled_from(VALID_QUERY_VALUES), hostile_text, st.text(max_size=2100).filter(bool))
    return endpoint, draw(st.lists(st.tuples(keys, values), max_size=4))


@settings(max_examples=80, **FUZZ)
@given(query=queries())
@example(query=(ADMIN_GETS[-1], [("klar", PATIENT), ("utfall", "keep")]))  # a number where a reference goes
@example(query=(ADMIN_GETS[4], [("region", "kalmar"), ("region", "<script>"), ("overdue", "maybe")]))
def test_hostile_query_parameters(ad: Adapters, client: TestClient,
                                  query: tuple[tuple[str, str, tuple[str, ...]], list[tuple[str, str]]]) -> None:
    (path, user, _), pairs = query
    before = order_count(ad)
    r = client.get(f"{path}?{query_string(pairs)}", headers=as_(user))
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert r.status_code in (200, 422), (r.status_code, r.text[:300])
    ctype = r.headers.get("content-type", "")
    if path.startswith("/api/") and r.status_code == 422:
        assert_error_shape(r)
    if ctype.startswith("text/html"):
        assert_inert_html(r.text)
    if ctype.startswith("text/csv"):
        assert not PNR_SHAPE.search(r.text), r.text[:500]   # the export never carries a personal number
    if ctype.startswith("application/pdf"):
        assert_pdf_has_no_active_content(r.content)
    assert_no_echo(" ".join(v for _, v in pairs), r)
    assert order_count(ad) == before


# --- bodies nobody reads: the operations without one ---------------------------------------------------------

@settings(max_examples=30, **FUZZ)
@given(path=st.sampled_from(["/api/orders/{}/urgent", "/api/orders/{}/resume-digital", "/healthz"]),
       raw=st.one_of(st.binary(max_size=300), st.builds(encode, json_values, st.booleans()), st.just(b"x" * 70_000)),
       content_type=st.sampled_from([b"application/json", b"text/plain", b"application/x-www-form-urlencoded", b""]))
def test_operations_without_a_body_ignore_whatever_is_sent(client: TestClient, path: str, raw: bytes,
                                                            content_type: bytes) -> None:
    ref = f"RO-{YEAR}-{FIRST_REFERENCE + 2:06d}"  # exists; it may already be urgent, and is not on paper
    method = client.get if path == "/healthz" else client.post
    user = CLINICIAN if path == "/healthz" else (ONCALL if path.endswith("urgent") else SUPPORT)
    r = method(path.format(ref), headers={**as_(user), "Content-Type": content_type.decode("latin-1")},
               **({} if method == client.get else {"content": raw}))
    assert r.status_code < 500 or path == "/healthz" and r.status_code == 503, (r.status_code, r.text[:300])
    if 400 <= r.status_code < 500:
        assert_error_shape(r)
    assert_no_echo(raw.decode("utf-8", "replace"), r)


# --- JSON bodies of the review outcome and the admin posts ---------------------------------------------------

JSON_POSTS: list[tuple[str, str, dict[str, Any]]] = [  # path, user, a valid body
    ("/api/admin/patient-log", ADMIN, {"personal_number": PATIENT}),
    ("/api/admin/sample-check", ADMIN, {"days": 30, "size": 5, "seed": 7}),
    ("/api/orders/{}/review", HEAD, {"outcome": "keep"}),
]


@st.composite
def json_posts(draw: st.DrawFn) -> tuple[tuple[str, str, dict[str, Any]], Any]:
    endpoint = draw(st.sampled_from(JSON_POSTS))
    b: Any = dict(endpoint[2])
    kind = draw(st.sampled_from(["field", "extra", "any"]))
    if kind == "field":
        b[draw(st.sampled_from(sorted(b)))] = draw(st.one_of(hostile_text, json_values, personal_numbers,
                                                               st.integers(-(2**65), 2**65)))
    elif kind == "extra":
        b[draw(json_keys)] = draw(json_values)
    else:
        b = draw(json_values)
    return endpoint, b


@settings(max_examples=60, **FUZZ)
@given(request=json_posts(), ascii_only=st.booleans())
@example(request=(JSON_POSTS[0], {"personal_number": "\x00"}), ascii_only=True)
@example(request=(JSON_POSTS[1], {"days": 10**400}), ascii_only=True)
def test_hostile_json_bodies_of_the_admin_and_review_posts(ad: Adapters, client: TestClient,
                                                           request: tuple[tuple[str, str, dict[str, Any]], Any],
                                                           ascii_only: bool) -> None:
    (path, user, _), payload = request
    ref = f"RO-{YEAR}-{FIRST_REFERENCE + 3:06d}"  # exists, completed or not: never due for review now
    raw = encode(payload, ascii_only)
    before = order_count(ad)
    r = post_body(client, path.format(ref), raw, user=user)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert r.status_code in (200, 404, 409, 413, 415, 422), (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert_error_shape(r)
    else:
        assert "review" not in path  # no review is due for that order
    assert_no_echo(raw.decode("utf-8", "replace"), r)
    assert order_count(ad) == before


def due_for_review(ad: Adapters, c: TestClient) -> str:
    """A completed order whose review date has passed, executed 400 days ago as the run would have done (the
    order is stored without a run: nothing but this helper moves it)."""
    from datetime import timedelta

    from tests.monitoring_support import execute_at, submit_at
    ref = submit_at(ad, ad.now(), body("seal_or_lock", patient_personal_number=pnr()), actor=CLINICIAN)
    execute_at(ad, ad.now() - timedelta(days=400), ref)
    return ref


def outcome_rows(ad: Adapters, reference: str) -> int:
    from models.tables import AuditEvent
    with ad.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.order_reference == reference,
            AuditEvent.action.in_(["review_kept", "review_restore_ordered"]))) or 0)


@settings(max_examples=25, **FUZZ)
@given(outcome=st.one_of(st.sampled_from(["keep", "restore", "KEEP", " keep", "keep\x00", ""]), hostile_text,
                         json_values),
       extra=st.one_of(st.none(), st.tuples(json_keys, json_values)), ascii_only=st.booleans())
@example(outcome="restore", extra=None, ascii_only=True)
@example(outcome="keep", extra=("outcome ", "restore"), ascii_only=False)
def test_hostile_review_outcomes_store_nothing_invalid(ad: Adapters, client: TestClient, outcome: Any,
                                                       extra: tuple[str, Any] | None, ascii_only: bool) -> None:
    """On an order whose review is due, so that a valid body gets all the way to the database."""
    ref = due_for_review(ad, client)
    due_before = stored(ad, ref).review_due_on
    payload: dict[str, Any] = {"outcome": outcome}
    if extra is not None:
        payload[extra[0]] = extra[1]
    raw = encode(payload, ascii_only)
    before = order_count(ad)
    r = post_body(client, f"/api/orders/{ref}/review", raw, user=HEAD)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert r.status_code in (200, 413, 415, 422), (r.status_code, r.text[:300])
    assert_no_echo(raw.decode("utf-8", "replace"), r)
    if r.status_code != 200:
        assert_error_shape(r)
        assert outcome_rows(ad, ref) == 0 and stored(ad, ref).review_due_on == due_before
        assert order_count(ad) == before
        return
    assert outcome in ("keep", "restore") and outcome_rows(ad, ref) == 1
    assert stored(ad, ref).review_due_on != due_before
    restore = r.json()["restore_reference"]
    assert order_count(ad) == before + (outcome == "restore") and (restore is not None) == (outcome == "restore")
    if restore:
        assert_stored_order_is_valid(ad, client, restore, by="system")
        assert stored(ad, restore).order_type == "restore_access"


# --- paper orders ----------------------------------------------------------------------------------------------

PAPER = "/api/paper-orders"
PAPER_ONLY = ("received_on", "signature_checked", "orderer_hsa_id", "reference")


def paper_body(order_type: str, serial: int) -> dict[str, Any]:
    return {**valid_body(order_type, serial), "received_on": today().isoformat(), "signature_checked": True}


paper_values = st.one_of(
    hostile_text, json_values, long_text,
    st.dates().map(date.isoformat), st.sampled_from(["2026-02-30", "idag", "0000-00-00", "9999-12-31T00:00:00"]),
    st.sampled_from([HEAD, "demo-kalmar-clinician2", "DEMO-OSTERGOTLAND-CLINICIAN", "NOBODY", f"{CLINICIAN}\x00"]),
    st.builds(_existing, st.integers(1, 40), st.integers(0, 6)),
)


@settings(max_examples=60, **FUZZ)
@given(order_type=st.sampled_from(ORDER_TYPES), serial=st.integers(1, 999),
       field=st.sampled_from([*ORDER_FIELDS, *PAPER_ONLY, "extra", *(f"-{f}" for f in (*ORDER_FIELDS, *PAPER_ONLY))]),
       value=paper_values, ascii_only=st.booleans())
@example(order_type="seal_or_lock", serial=5, field="orderer_hsa_id", value="DEMO-KALMAR-HEAD\x00", ascii_only=True)
@example(order_type="seal_or_lock", serial=6, field="urgent", value=True, ascii_only=True)  # pages on-call
@example(order_type="seal_or_lock", serial=7, field="reason", value=MARKUP, ascii_only=False)
def test_hostile_paper_order_bodies(ad: Adapters, client: TestClient, smtp: Path, order_type: str, serial: int,
                                    field: str, value: Any, ascii_only: bool) -> None:
    raw = encode(replace_field(paper_body(order_type, serial), field, value), ascii_only)
    before = order_count(ad)
    r = post_body(client, PAPER, raw, user=SUPPORT)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert r.status_code in (201, 403, 409, 413, 415, 422), (r.status_code, r.text[:300])
    assert_no_echo(raw.decode("utf-8", "replace"), r)
    if r.status_code != 201:
        assert_error_shape(r)
        assert order_count(ad) == before
        return
    assert order_count(ad) == before + 1
    ref = r.json()["reference"]
    assert_stored_order_is_valid(ad, client, ref, by=None)
    o = stored(ad, ref)
    assert o.channel == "paper" and o.paper_registered_by == SUPPORT and o.paper_received_on is not None
    assert local(o.paper_received_on).date() <= today()
    assert_not_in_emails(ad, [ref], smtp, [])  # an urgent one has paged on-call: reference only


def test_a_lone_surrogate_as_the_paper_orderer_is_refused(ad: Adapters, client: TestClient) -> None:
    """What test_hostile_paper_order_bodies finds now and then, every time: JSON carries a lone surrogate
    ("\\ud800") into any string field, and the orderer's HSA-id went to the database with it."""
    for ascii_only in (True, False):
        raw = encode(replace_field(paper_body("seal_or_lock", 8), "orderer_hsa_id", "\ud800"), ascii_only)
        before = order_count(ad)
        r = post_body(client, PAPER, raw, user=SUPPORT)
        assert r.status_code == 422, (r.status_code, r.text[:300])
        assert_error_shape(r)
        assert order_count(ad) == before


# --- the monitoring pages' HTML forms ------------------------------------------------------------------------

FORMS: list[tuple[str, str, dict[str, str], str]] = [  # path, user, a valid form, the page it is on
    ("/admin/logg/patient", ADMIN, {"personal_number": PATIENT}, "/admin/logg"),
    ("/admin/logg/stickprov", ADMIN, {"days": "30", "size": "5"}, "/admin/logg"),
    ("/omprovningar/{}", HEAD, {"outcome": "keep"}, "/omprovningar"),
]


@settings(max_examples=40, **FUZZ)
@given(form=st.sampled_from(FORMS), field=st.sampled_from(["personal_number", "days", "size", "outcome", "x"]),
       value=st.one_of(hostile_text, personal_numbers, st.integers(-(2**40), 2**40).map(str)),
       drop_csrf=st.booleans())
@example(form=FORMS[0], field="personal_number", value=MARKUP, drop_csrf=False)
def test_hostile_html_forms_of_the_monitoring_pages(ad: Adapters, client: TestClient, csrf: str,
                                                     form: tuple[str, str, dict[str, str], str],
                                                     field: str, value: str, drop_csrf: bool) -> None:
    path, user, valid, page = form
    ref = f"RO-{YEAR}-{FIRST_REFERENCE + 4:06d}"  # exists, never due for review now
    data = {**valid, field: value, **({} if drop_csrf else {"csrf_token": csrf})}
    sent = urlencode(data, errors="surrogatepass").encode("ascii")
    before = order_count(ad)
    r = client.post(path.format(ref), content=sent,
                    headers={**as_(user), "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert r.status_code in (200, 303, 403, 404, 409, 422), (r.status_code, r.text[:300])
    if drop_csrf:
        assert r.status_code == 403
    if r.headers.get("content-type", "").startswith("text/html"):
        assert_inert_html(r.text)
    assert_no_echo(value, r, client.get(page, headers=as_(user)).text)
    assert order_count(ad) == before
