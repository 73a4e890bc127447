"""What every page shares: the Jinja2 environment, Swedish formatting, the navigation, rendering with the
session's CSRF token, error pages and the error summary.

Every page works without JavaScript; `static/app.js` only adds show/hide, live validation and a
double-click guard. URLs and titles carry order references, never personal numbers. Templates are
autoescaped (free text is always shown as text).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.datastructures import FormData

from forms.auth import (
    CSRF_FIELD,
    ROLE_LABELS_SV,
    User,
    check_form_csrf,
    identify,
    require_user,
    session_data,
    set_session,
)
from models import contacts, personnummer, swedish
from models.phone import national as national_phone
from models.regions import UNSET_SV, RegionSettings
from models.routine import STAGES, Stage, StageDef, callback_promise_sv
from models.schemas import INITIATIVE_LABELS_SV, ORDER_TYPE_LABELS_SV
from models.status import LABELS_SV, OrderStatus
from tasks.adapters import Adapters

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "pages"
# Fuller than models.schemas.ACTION_LABELS_SV, and the same words as the paper form.
SEAL_LABELS = {"seal_journal": "Försegla 1177 journal", "lock_login": "Låsa inloggning till 1177 e-tjänster"}
RESTORE_LABELS = {"seal_journal": "Bryta försegling av 1177 journal",
                  "lock_login": "Låsa upp inloggning till 1177 e-tjänster"}


# --- formatting ---------------------------------------------------------------------------------------

when = swedish.when_long
short_when = swedish.when_short


def tel_href(phone: str) -> str:
    digits = re.sub(r"[^0-9+]", "", phone)
    return "tel:" + ("+46" + digits[1:] if digits.startswith("0") else digits)


def phone_line(region: RegionSettings) -> tuple[str, str | None]:
    """The support number as people read it, and its tel: link (None when the number is not set)."""
    phone = region.support_phone.shown
    return contacts.support_phone_text(region, sep=", "), tel_href(phone) if phone else None


def masked(pnr: str) -> str:
    return personnummer.mask(pnr)


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES),
                      autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, short_when=short_when, day=swedish.day)
    env.filters["phone"] = national_phone  # +46701234567 -> 070-123 45 67 (models/phone.py)
    env.globals.update(status_label=lambda s: LABELS_SV.get(OrderStatus(s), s), type_label=ORDER_TYPE_LABELS_SV.get,
                       initiative_label=INITIATIVE_LABELS_SV.get, action_label=SEAL_LABELS.get,
                       restore_label=RESTORE_LABELS.get, role_label=ROLE_LABELS_SV.get, masked=masked,
                       unset_text=UNSET_SV, tel_href=tel_href)
    return env


templates = Jinja2Templates(env=_env())


INTROS: dict[Stage, str] = {
    Stage.HARM_ASSESSMENT: "Beställningar i din region som väntar på menprövning.",
    Stage.APPROVAL: "Beställningar som väntar på ditt godkännande: från de vårdenheter där du är "
                    "verksamhetschef och, om du är bakjour, brådskande beställningar utanför kontorstid.",
    Stage.CALLBACK: "Brådskande beställningar där beställaren ska ringas upp {promise}.",
    Stage.EXECUTION: "Godkända beställningar som ska utföras i 1177 administrationsverktyg.",
}


def intro(sd: StageDef, ad: Adapters, user: User) -> str:
    """A queue's introduction, in the words of the person's region (its callback promise)."""
    region = ad.regions.get(user.region or "")
    minutes = region.promised_callback_minutes if region else None
    return INTROS[sd.stage].format(promise=callback_promise_sv(minutes))


# --- rendering ----------------------------------------------------------------------------------------

def nav(user: User | None) -> list[tuple[str, str]]:
    if user is None:
        return []
    items = [("/", "Start")]
    if user.has("clinician"):
        items.append(("/bestallningar", "Mina beställningar"))
    items += [(f"/ko/{d.queue_slug}", d.title_sv) for d in STAGES.values() if user.has(*d.roles)]
    if user.has("head_of_department"):
        items.append(("/omprovningar", "Omprövning"))  # forms/admin_routes.py
    if user.has("admin"):
        items.append(("/admin", "Översikt"))
    return items


def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    user = ctx.get("user")
    data = session_data(request)
    base: dict[str, Any] = {"user": user, "nav": nav(user), "path": request.url.path, "csrf": data.csrf,
                            "csrf_field": CSRF_FIELD, "errors": {}, "summary": [], "notice": None,
                            "demo": request.app.state.adapters.settings.demo}
    response = templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)
    if data.fresh:  # so a later form post can echo the token (also for SSO users without a login session)
        set_session(request, response, data)
    return response


def error_page(request: Request, status: int, message: str) -> Response:
    titles = {401: "Inte inloggad", 403: "Åtkomst nekad", 404: "Sidan finns inte", 409: "Kan inte göras nu",
              413: "För stor förfrågan", 500: "Tekniskt fel", 503: "Tillfälligt otillgänglig"}
    try:
        user = identify(request)
    except Exception:  # the database may be what failed
        user = None
    return render(request, "error.html.j2", {"user": user, "title": titles.get(status, "Fel"), "message": message,
                                             "status": status}, status)


def render_plain_error(status: int, title: str, message: str, *, demo: bool) -> str:
    """For the body-size guard, which answers before any request object exists."""
    return templates.env.get_template("error.html.j2").render(
        user=None, nav=[], path="", csrf="", csrf_field=CSRF_FIELD, errors={}, summary=[], notice=None,
        title=title, message=message, status=status, demo=demo)


def summary_links(problems: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    """[(anchor id, label, message)] -> the error summary's links."""
    return [{"href": f"#{anchor}", "text": f"{label}: {message}" if label else message}
            for anchor, label, message in problems]


def form_str(form: FormData, name: str) -> str:
    v = form.get(name)
    return v.strip() if isinstance(v, str) else ""


async def posted_form(request: Request) -> tuple[User, FormData]:
    """The person and the form of a page's POST, after the form's CSRF check."""
    user = require_user(request)
    form = await request.form()
    check_form_csrf(request, form_str(form, CSRF_FIELD))
    return user, form
