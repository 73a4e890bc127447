"""Who is asking, and what they may do.

Identity comes from one of two places:
- the SSO reverse proxy's `X-Remote-User: <HSA-id>` header, trusted only when the TCP peer (as uvicorn
  reports it) is listed in the settings' `trusted_proxies` (addresses or networks, comma-separated);
- otherwise the signed session cookie set by the embedded login page (when the settings' `embedded_login`).

The session cookie also carries the CSRF token, so a browser behind the SSO proxy gets a cookie too (with
no user in it): every HTML form post must echo the token in a hidden field. `csrf_guard` (a dependency of
the whole app) adds the rule for every state-changing request: `Sec-Fetch-Site: cross-site` is refused,
and a state-changing /api request authenticated by the cookie must carry `X-CSRF-Token`, one authenticated
by the proxy header must be `Content-Type: application/json` or carry the token. A cross-site HTML form can
send neither the header nor that content type without a CORS preflight, which this app never answers;
and the SSO proxy adds its header to any request the browser makes, so the header alone proves nothing
about where the request came from. Roles always come from the staff table, never from the request.

`trusted_proxies` is compared with the client address uvicorn reports. uvicorn rewrites that address from
`X-Forwarded-For` when the peer is in its `forwarded_allow_ips` (loopback by default), so behind the SSO
proxy leave the proxy out of `forwarded_allow_ips` and list it in `RO_TRUSTED_PROXIES`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, Literal

from fastapi import HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from forms.deps import adapters
from models.reference import REFERENCE
from models.routine import ROLE_LABELS_SV as ROUTINE_ROLE_LABELS_SV
from models.tables import Order, RevokedSession, Staff
from tasks.adapters import audit, directory
from tasks.adapters.settings import DEFAULT_SESSION_SECRET, MIN_SESSION_SECRET_LENGTH, Settings

log = logging.getLogger(__name__)

COOKIE = "ro_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
USER_HEADER = "X-Remote-User"
SESSION_MAX_AGE = 12 * 60 * 60  # one working shift

# The labels are the routine's (models/routine.py): pages and emails name roles alike.
ROLE_LABELS_SV = ROUTINE_ROLE_LABELS_SV
# Roles that read every order of their region (a person without a region reads all regions).
REGION_READERS = ("support", "on_call", "assessor", "account_admin", "bakjour")


class NotAuthenticated(Exception):
    """No identity: 401 for the API, a redirect to the login page for pages."""


class NotAllowed(Exception):
    """A known person without the right to do this: 403."""

    def __init__(self, message: str, code: str = "forbidden", *, audited: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        # Whether the refusal is already in the audit log (the service layer writes its own); otherwise the
        # app's handler writes it (audit_refusal).
        self.audited = audited


@dataclass(frozen=True)
class User:
    hsa_id: str
    name: str
    roles: tuple[str, ...]
    unit_hsa_id: str | None
    region: str | None
    via: Literal["header", "cookie"]

    def has(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    @property
    def role_labels(self) -> str:
        return ", ".join(ROLE_LABELS_SV.get(r, r) for r in self.roles)


@dataclass(frozen=True)
class SessionData:
    hsa_id: str | None
    csrf: str
    fresh: bool  # not read from a valid cookie: the response must set it


class InsecureSettings(RuntimeError):
    """The app must not start like this."""


def check_session_settings(cfg: Settings) -> None:
    """Behind the SSO proxy (no embedded login) the session cookie still carries the CSRF token; signed with
    a secret anyone can read in this repository, any site could forge it. Refuse to start instead."""
    if cfg.embedded_login:
        return
    secret = cfg.session_secret.strip()
    if secret == DEFAULT_SESSION_SECRET or len(secret) < MIN_SESSION_SECRET_LENGTH:
        raise InsecureSettings(
            "RO_EMBEDDED_LOGIN=false needs RO_SESSION_SECRET: a random secret of at least "
            f"{MIN_SESSION_SECRET_LENGTH} characters, not the embedded default "
            "(for example: python -c 'import secrets; print(secrets.token_urlsafe(48))').")


def _settings(request: Request) -> Settings:
    return adapters(request).settings


def _serializer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_settings(request).session_secret, salt="restriction-orders-session")


@lru_cache(maxsize=8)
def _networks(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip())


def trusted_peer(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(addr in net for net in _networks(_settings(request).trusted_proxies))


def session_data(request: Request) -> SessionData:
    """The session from the cookie, or a fresh one (not logged in, new CSRF token). Cached per request."""
    cached = getattr(request.state, "ro_session", None)
    if isinstance(cached, SessionData):
        return cached
    data = SessionData(None, secrets.token_urlsafe(32), True)
    raw = request.cookies.get(COOKIE)
    if raw:
        try:
            loaded = _serializer(request).loads(raw, max_age=SESSION_MAX_AGE)
            if isinstance(loaded, dict) and isinstance(loaded.get("c"), str) and loaded["c"]:
                data = SessionData(str(loaded.get("u") or "") or None, loaded["c"], False)
        except BadSignature:  # also SignatureExpired
            pass
    request.state.ro_session = data
    return data


def set_session(request: Request, response: Response, data: SessionData) -> None:
    value = _serializer(request).dumps({"u": data.hsa_id or "", "c": data.csrf})
    response.set_cookie(COOKIE, value, max_age=SESSION_MAX_AGE, httponly=True, samesite="lax", path="/",
                        secure=_settings(request).app_base_url.startswith("https://"))


def clear_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")


def session_id(data: SessionData) -> str:
    """The id a logged-out cookie is remembered by: a hash of its CSRF token (random, new at every login),
    so the revocation table holds nothing that could be replayed."""
    return hashlib.sha256(f"ro-session:{data.csrf}".encode()).hexdigest()


def _revoked(s: Session, data: SessionData) -> bool:
    return s.get(RevokedSession, session_id(data)) is not None


def revoke_session(request: Request) -> None:
    """Logout: the cookie stays signed and unexpired for up to 12 h wherever it was copied, so the server
    forgets it too. Expired revocations are removed on the way (their cookies' signatures have expired)."""
    data = session_data(request)
    if data.fresh or not data.hsa_id:
        return
    at = adapters(request).now()
    with adapters(request).db.session() as s:
        s.execute(delete(RevokedSession).where(RevokedSession.expires_at < at))
        if not _revoked(s, data):
            s.add(RevokedSession(session_id=session_id(data), revoked_at=at,
                                 expires_at=at + timedelta(seconds=SESSION_MAX_AGE)))
        s.commit()
    request.state.ro_user = None


def new_login(hsa_id: str | None) -> SessionData:
    # A new CSRF token on every login and logout, so a token seen before cannot be replayed after.
    return SessionData(hsa_id, secrets.token_urlsafe(32), True)


def _user(person: Staff | None, via: Literal["header", "cookie"]) -> User | None:
    if person is None:
        return None
    return User(person.hsa_id, person.name, tuple(person.roles), person.unit_hsa_id, person.region, via)


def identify(request: Request) -> User | None:
    """The member of staff behind this request, or None. Cached per request."""
    if hasattr(request.state, "ro_user"):
        cached: User | None = request.state.ro_user
        return cached
    user: User | None = None
    header = request.headers.get(USER_HEADER, "").strip()
    if header and trusted_peer(request):
        with adapters(request).db.session() as s:
            user = _user(directory.staff(s, header), "header")
    elif _settings(request).embedded_login:
        data = session_data(request)
        if data.hsa_id:
            with adapters(request).db.session() as s:
                if not _revoked(s, data):  # logged out: no identity (401, or the login page)
                    user = _user(directory.staff(s, data.hsa_id), "cookie")
    request.state.ro_user = user
    return user


def require_user(request: Request) -> User:
    user = identify(request)
    if user is None:
        raise NotAuthenticated()
    return user


def cookie_revoked(request: Request, s: Session) -> bool:
    """For a route that reads the session cookie itself (printing works with the database down)."""
    return _revoked(s, session_data(request))


def audit_refusal(request: Request, exc: NotAllowed) -> None:
    """A refusal at a role gate, in the audit log as `decision_refused` with its reason code: who tried which
    operation, never what they sent (no personal data). CSRF refusals are not a person's decision and are
    not logged; refusals the service layer logged itself are not logged twice."""
    if exc.audited or exc.code == "csrf_failed":
        return
    try:
        user = identify(request)  # cached: the route has asked already
    except OperationalError:
        return
    if user is None:
        return
    route = request.scope.get("route")
    detail: dict[str, Any] = {"why": exc.code, "by": "app", "method": request.method,
                              "route": getattr(route, "path", None) or "?"}
    ref = str(request.path_params.get("reference", "")).strip().upper()
    if REFERENCE.fullmatch(ref):
        detail["reference"] = ref
    try:
        with adapters(request).db.session() as s:
            audit.record(s, actor=user.hsa_id, action="decision_refused", detail=detail, at=adapters(request).now())
            s.commit()
    except OperationalError:  # the refusal stands without its row: the database is down
        log.warning("refusal not audited: orders database unavailable")
    exc.audited = True


def require_roles(user: User, *roles: str, message: str | None = None) -> None:
    if not user.has(*roles):
        wanted = ", ".join(ROLE_LABELS_SV.get(r, r).lower() for r in roles)
        raise NotAllowed(message or f"Du har inte behörighet till detta (kräver roll: {wanted}).", "wrong_role")


def csrf_ok(request: Request, token: str | None) -> bool:
    data = session_data(request)
    # As bytes: compare_digest refuses str with non-ASCII characters (TypeError), and a token is anything sent.
    return not data.fresh and bool(token) and secrets.compare_digest(str(token).encode("utf-8", "replace"),
                                                                     data.csrf.encode())


def check_api_csrf(request: Request, user: User) -> None:
    """JSON posts authenticated by the session cookie must carry the token in a header."""
    if user.via == "cookie" and not csrf_ok(request, request.headers.get(CSRF_HEADER)):
        raise NotAllowed("Ogiltig eller saknad CSRF-token (X-CSRF-Token).", "csrf_failed")


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def is_json(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # The same test as the API's body reader; none of these is a type a cross-site form can send.
    return ctype == "application/json" or ctype.endswith("+json")


# API paths that also take the app's own HTML form posts (hidden CSRF field): printing the filled-in paper
# form, which must work with the orders database down, so nothing here may need the database.
FORM_POST_API = ("/api/paper-forms/",)


def is_form(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype in ("application/x-www-form-urlencoded", "multipart/form-data")


def _claimed_via(request: Request) -> str | None:
    """How the request claims its identity, without asking the staff directory (the database may be down):
    the route still looks the person up before it does anything."""
    if request.headers.get(USER_HEADER, "").strip() and trusted_peer(request):
        return "header"
    if _settings(request).embedded_login and session_data(request).hsa_id:
        return "cookie"
    return None


def csrf_guard(request: Request) -> None:
    """App-wide dependency: refuse state-changing requests that another site could have made.

    HTML form posts also check their hidden token (check_form_csrf), which needs the parsed form. A request
    without an identity passes here and gets its 401 from the route: it can change nothing."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        raise NotAllowed("Förfrågan kom från en annan webbplats och avvisades.", "csrf_failed")
    if not request.url.path.startswith("/api/"):
        return
    if request.url.path.startswith(FORM_POST_API) and is_form(request):
        return  # the route checks the form's hidden token itself (check_form_csrf)
    via = _claimed_via(request)
    if via is None:
        return
    token_ok = csrf_ok(request, request.headers.get(CSRF_HEADER))
    if via == "cookie" and not token_ok:
        raise NotAllowed("Ogiltig eller saknad CSRF-token (X-CSRF-Token).", "csrf_failed")
    if not (token_ok or is_json(request)):
        # 415 as the API has always answered a body that is not JSON; also for the posts without a body
        # (make urgent, resume digitally): send `{}` as JSON.
        raise HTTPException(415, "Skicka JSON (Content-Type: application/json).")


def check_form_csrf(request: Request, token: str | None) -> None:
    if not csrf_ok(request, token):
        raise NotAllowed("Formuläret har gått ut eller kom inte från den här tjänsten. Ladda om sidan och försök igen.",
                         "csrf_failed")


def may_read(user: User, order: Order, unit_head: str | None) -> bool:
    """Clinicians read their own orders; heads the orders of their units; region roles their region's."""
    if user.hsa_id == order.submitted_by or user.has("admin"):
        return True
    if user.has("head_of_department") and (unit_head == user.hsa_id or order.care_unit_hsa_id == user.unit_hsa_id):
        return True
    return user.has(*REGION_READERS) and user.region in (None, order.region)
