"""The order forms, one per order type (only its fields), and their submission: the same rules as the API."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote
from uuid import uuid4

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.datastructures import FormData

from forms.actions import submit_raw
from forms.auth import CSRF_FIELD, User, check_form_csrf, require_roles, require_user
from forms.deps import adapters
from forms.errors import ApiError
from forms.pages.common import RESTORE_LABELS, SEAL_LABELS, form_str, render, summary_links
from forms.pages.login import ORDER_TYPE_HELP
from models.routine import ORDER_TYPES as TYPES
from models.schemas import ORDER_TYPE_LABELS_SV, ORDER_TYPES, Problem
from models.tables import CareUnit
from tasks.adapters import Adapters

router = APIRouter(include_in_schema=False)
CARE_ONLY = tuple(code for code, t in TYPES.items() if t.care_only)
# The fields each form shows, in page order (the error summary follows the same order).
FORM_FIELDS: dict[str, tuple[str, ...]] = {
    "seal_or_lock": ("patient_personal_number", "patient_protected_identity", "initiative", "actions", "urgent",
                     "reason", "care_unit_hsa_id"),
    "restore_access": ("patient_personal_number", "patient_protected_identity", "initiative", "actions",
                       "identity_checked_in_person", "urgent", "reason", "care_unit_hsa_id"),
    "block_guardian": ("patient_personal_number", "patient_protected_identity", "guardian_personal_number",
                       "guardian_protected_identity", "urgent", "reason", "care_unit_hsa_id"),
    "minor_access": ("patient_personal_number", "patient_protected_identity", "minor_grant", "minor_recipient",
                     "guardian_personal_number", "guardian_protected_identity", "child_consent", "urgent", "reason",
                     "care_unit_hsa_id"),
}
# Rule-engine field names -> the form group that shows the message.
GROUP_OF = {"minor_access": "minor_grant", "minor_access.grant": "minor_grant",
            "minor_access.recipient": "minor_recipient", "minor_access.child_consent": "child_consent",
            "region": "care_unit_hsa_id"}
# The element an error-summary link moves focus to: the first option of a radio/checkbox group.
ANCHOR_OF = {"initiative": "initiative-patient", "actions": "actions-seal_journal",
             "minor_grant": "minor_grant-grant", "minor_recipient": "minor_recipient-minor"}


def _units(ad: Adapters) -> list[CareUnit]:
    with ad.db.session() as s:
        return list(s.scalars(select(CareUnit).order_by(CareUnit.region, CareUnit.name)))


def form_values(order_type: str, form: FormData | None, user: User) -> dict[str, Any]:
    if form is None:
        return {"initiative": "care" if order_type in CARE_ONLY else "", "actions": [], "patient_personal_number": "",
                "patient_protected_identity": False, "guardian_personal_number": "",
                "guardian_protected_identity": False, "minor_grant": "",
                "minor_recipient": "", "child_consent": False, "identity_checked_in_person": False, "urgent": False,
                "reason": "", "care_unit_hsa_id": user.unit_hsa_id or "", "idempotency_key": uuid4().hex}
    return {
        "initiative": "care" if order_type in CARE_ONLY else form_str(form, "initiative"),
        "actions": [a for a in form.getlist("actions") if isinstance(a, str)],
        "patient_personal_number": form_str(form, "patient_personal_number"),
        "patient_protected_identity": "patient_protected_identity" in form,
        "guardian_personal_number": form_str(form, "guardian_personal_number"),
        "guardian_protected_identity": "guardian_protected_identity" in form,
        "minor_grant": form_str(form, "minor_grant"), "minor_recipient": form_str(form, "minor_recipient"),
        "child_consent": "child_consent" in form, "identity_checked_in_person": "identity_checked_in_person" in form,
        "urgent": "urgent" in form, "reason": form_str(form, "reason"),
        "care_unit_hsa_id": form_str(form, "care_unit_hsa_id"),
        "idempotency_key": form_str(form, "idempotency_key") or uuid4().hex,
    }


def to_raw(order_type: str, v: dict[str, Any], user: User, units: list[CareUnit]) -> dict[str, Any]:
    """The form's values as the API body, so both paths meet the same rules."""
    region_of = {u.hsa_id: u.region for u in units}
    raw: dict[str, Any] = {
        "order_type": order_type, "initiative": v["initiative"] or None,
        "patient_personal_number": v["patient_personal_number"],
        "patient_protected_identity": v["patient_protected_identity"], "urgent": v["urgent"], "reason": v["reason"],
        "care_unit_hsa_id": v["care_unit_hsa_id"],
        # The region follows the chosen care unit: one field less to get wrong.
        "region": region_of.get(v["care_unit_hsa_id"]) or user.region,
    }
    if order_type in ("seal_or_lock", "restore_access"):
        raw["actions"] = v["actions"]
    if order_type == "restore_access":
        raw["identity_checked_in_person"] = v["identity_checked_in_person"]
    if order_type == "block_guardian" or (order_type == "minor_access" and v["minor_recipient"] == "guardian"):
        raw["guardian_personal_number"] = v["guardian_personal_number"]
        raw["guardian_protected_identity"] = v["guardian_protected_identity"]
    if order_type == "minor_access":
        raw["minor_access"] = {"grant": {"grant": True, "revoke": False}.get(v["minor_grant"]),
                               "recipient": v["minor_recipient"] or None, "child_consent": v["child_consent"]}
    return raw


def field_labels(order_type: str) -> dict[str, str]:
    child = order_type in CARE_ONLY
    return {
        "patient_personal_number": f"{'Barnets' if child else 'Patientens'} personnummer eller samordningsnummer",
        "patient_protected_identity": "Skyddade personuppgifter",
        "initiative": "Initiativ", "actions": "Vad ska hävas?" if order_type == "restore_access" else "Åtgärd",
        "identity_checked_in_person": "Identitetskontroll",
        "guardian_personal_number": "Vårdnadshavarens personnummer",
        "guardian_protected_identity": "Vårdnadshavarens skyddade personuppgifter",
        "minor_grant": "Ge eller ta bort tillgång", "minor_recipient": "Tillgång för",
        "child_consent": "Barnets samtycke", "urgent": "Brådskande", "reason": "Skäl till beställningen",
        "care_unit_hsa_id": "Beställande vårdenhet",
    }


def form_page(request: Request, user: User, order_type: str, values: dict[str, Any],
               problems: list[Problem] | None = None, warnings: list[Problem] | None = None, status: int = 200) -> Response:
    labels = field_labels(order_type)
    order = FORM_FIELDS[order_type]
    errors: dict[str, list[str]] = {}
    for p in problems or []:
        group = GROUP_OF.get(p.field, p.field)
        errors.setdefault(group if group in order else "", []).append(p.message)
    listed = sorted(errors.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else -1)
    summary = summary_links([(ANCHOR_OF.get(g, g) if g else "order-form", labels.get(g, ""), m)
                        for g, msgs in listed for m in msgs])
    title = ("Fel: " if errors else "") + f"Ny beställning: {ORDER_TYPE_LABELS_SV[order_type]}"
    return render(request, "order_form.html.j2", {
        "user": user, "title": title, "order_type": order_type, "label": ORDER_TYPE_LABELS_SV[order_type],
        "help": ORDER_TYPE_HELP[order_type], "fields": order, "labels": labels, "v": values, "errors": errors,
        "summary": summary, "warnings": warnings or [], "units": _units(adapters(request)),
        "care_only": order_type in CARE_ONLY,
        "action_labels": RESTORE_LABELS if order_type == "restore_access" else SEAL_LABELS,
    }, status)


def _order_type(order_type: str) -> str:
    if order_type not in ORDER_TYPES:
        raise ApiError(404, "not_found", "Det finns ingen sådan beställningstyp.")
    return order_type


@router.get("/bestall/{order_type}", response_class=HTMLResponse)
def order_form(request: Request, order_type: str) -> Response:
    user = require_user(request)
    require_roles(user, "clinician", message="Endast vårdpersonal kan göra beställningar.")
    return form_page(request, user, _order_type(order_type), form_values(order_type, None, user))


@router.post("/bestall/{order_type}")
async def submit_form(request: Request, order_type: str) -> Response:
    user = require_user(request)
    form = await request.form()
    check_form_csrf(request, form_str(form, CSRF_FIELD))
    require_roles(user, "clinician", message="Endast vårdpersonal kan göra beställningar.")
    values = form_values(_order_type(order_type), form, user)
    ad = adapters(request)
    raw = to_raw(order_type, values, user, _units(ad))
    # The hidden idempotency token makes a double click (or a reload of the post) one order.
    try:
        result = await submit_raw(ad, raw, user, f"form-{values['idempotency_key'][:64]}")
    except ApiError as exc:
        if exc.status != 409:
            raise
        values["idempotency_key"] = uuid4().hex  # the token was used for other values: let the person resend
        message = ("Formuläret har redan skickats en gång med andra uppgifter. Kontrollera uppgifterna och "
                   "skicka igen för att göra en ny beställning.")
        return form_page(request, user, order_type, values, [Problem(field="", code=exc.code, message=message)],
                          status=409)
    if result.status == 422:
        return form_page(request, user, order_type, values, result.errors, result.warnings, 422)
    codes = ",".join(w.code for w in result.warnings)
    target = f"/bestallningar/{result.body['reference']}/kvitto" + (f"?varningar={quote(codes)}" if codes else "")
    return RedirectResponse(target, status_code=303)


