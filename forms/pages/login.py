"""Logging in (the embedded default's login page; production identifies people by the SSO proxy) and the
start page."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from forms.auth import (
    CSRF_FIELD,
    check_form_csrf,
    clear_session,
    identify,
    new_login,
    require_user,
    revoke_session,
    set_session,
)
from forms.deps import adapters
from forms.pages.common import error_page, form_str, intro, render
from models.routine import STAGES
from models.schemas import ORDER_TYPE_LABELS_SV, ORDER_TYPES
from models.tables import Staff
from tasks.adapters import directory
from tasks.steps.notifications import sent_to

router = APIRouter(include_in_schema=False)
ORDER_TYPE_HELP = {
    "seal_or_lock": "När journalen ska förseglas, inloggningen till 1177 e-tjänster låsas, eller båda – "
                    "på patientens önskemål eller vårdens initiativ.",
    "restore_access": "När en försegling eller låsning ska hävas. Patientens egen försegling hävs bara efter "
                      "identitetskontroll vid personligt besök.",
    "block_guardian": "När ett barn kan antas lida betydande men om en vårdnadshavare har direktåtkomst till "
                      "barnets journal och e-tjänster. Endast på vårdens initiativ.",
    "minor_access": "När ett barn som är 13–15 år, eller barnets vårdnadshavare, undantagsvis ska få eller inte "
                    "längre ha tillgång till barnets journal. Endast på vårdens initiativ.",
}


def _safe_next(target: str | None) -> str:
    # Only paths on this site: an absolute or protocol-relative URL would make the login an open redirect.
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> Response:
    ad = adapters(request)
    if not ad.settings.embedded_login:
        return error_page(request, 404, "Inloggning sker via SITHS-kort (single sign-on).")
    regions = ad.regions
    with ad.db.session() as s:
        people = sorted(s.scalars(select(Staff).where(Staff.active.is_(True))),
                        key=lambda p: (p.region is None, p.region or "", p.hsa_id))
    groups: dict[str, list[Staff]] = {}
    for p in people:
        region = regions.get(p.region or "")
        groups.setdefault(region.name if region else "Alla regioner", []).append(p)
    return render(request, "login.html.j2", {"title": "Logga in", "groups": groups, "next": _safe_next(next),
                                             "current": identify(request)})


@router.post("/login")
async def login(request: Request) -> Response:
    ad = adapters(request)
    if not ad.settings.embedded_login:
        return error_page(request, 404, "Inloggning sker via SITHS-kort (single sign-on).")
    form = await request.form()
    check_form_csrf(request, form_str(form, CSRF_FIELD))
    with ad.db.session() as s:
        person = directory.staff(s, form_str(form, "hsa_id"))
        hsa = person.hsa_id if person else None
    if hsa is None:
        return error_page(request, 403, "Personen finns inte i personalkatalogen.")
    response = RedirectResponse(_safe_next(form_str(form, "next")), status_code=303)
    set_session(request, response, new_login(hsa))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await request.form()
    check_form_csrf(request, form_str(form, CSRF_FIELD))
    await run_in_threadpool(revoke_session, request)  # the server forgets the cookie too (copies of it included)
    response = RedirectResponse("/login", status_code=303)
    clear_session(response)
    return response


@router.get("/", response_class=HTMLResponse)
def start(request: Request) -> Response:
    user = require_user(request)
    types = [{"code": t, "label": ORDER_TYPE_LABELS_SV[t], "help": ORDER_TYPE_HELP[t]} for t in ORDER_TYPES]
    ad = adapters(request)
    queues = [(f"/ko/{d.queue_slug}", {"title": d.title_sv, "intro": intro(d, ad, user)})
              for d in STAGES.values() if user.has(*d.roles)]
    return render(request, "start.html.j2", {"user": user, "title": "Start", "types": types, "queues": queues,
                                             "region": user.region or "kalmar",
                                             "sent": sent_to(ad, user.hsa_id)})  # "Skickat till dig"


