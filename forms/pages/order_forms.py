"""The order forms, one per order type (only its fields), and their submission: the same rules as the API."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote
from uuid import uuid4

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.datastructures import FormData

from forms.actions import submit_raw
from forms.auth import CSRF_FIELD, User, check_form_csrf, require_roles, require_user
from forms.deps import adapters, now
from forms.errors import ApiError
from forms.pages.common import RESTORE_LABELS, SEAL_LABELS, form_str, render, summary_links
from forms.pages.login import ORDER_TYPE_HELP
from models.routine import ORDER_TYPES as TYPES
from models.schemas import ORDER_TYPE_LABELS_SV, ORDER_TYPES, REASON_MAX, Problem
from models.tables import CareUnit
from tasks.adapters import Adapters
from tasks.steps import orders

router = APIRouter(include_in_schema=False)
CARE_ONLY = tuple(code for code, t in TYPES.items() if t.care_only)
# The fields each form shows, in page order (the error summary follows the same order).
FORM_FIELDS: dict[str, tuple[str, ...]] = {
    "seal_or_lock": ("patient_personal_number", "patient_protected_identity", "initiative", "actions", "urgent",
                     "callback_phone", "reason", "care_unit_hsa_id", "confirm_duplicate"),
    "restore_access": ("patient_personal_number", "patient_protected_identity", "initiative", "actions",
                       "identity_checked_in_person", "urgent", "callback_phone", "reason", "care_unit_hsa_id",
                       "confirm_duplicate"),
    "block_guardian": ("patient_personal_number", "patient_protected_identity", "guardian_personal_number",
                       "guardian_protected_identity", "urgent", "callback_phone", "reason", "care_unit_hsa_id",
                       "confirm_duplicate"),
    "minor_access": ("patient_personal_number", "patient_protected_identity", "minor_grant", "minor_recipient",
                     "guardian_personal_number", "guardian_protected_identity", "child_consent", "urgent",
                     "callback_phone", "reason", "care_unit_hsa_id", "confirm_duplicate"),
}
DUPLICATE = "duplicate_open_order"
CONFIRM_DUPLICATE = ("Bekräfta att det är en ny beställning (kryssa i rutan) och skicka igen, eller avbryt om "
                     "beställningen redan är gjord.")
# Rule-engine field names -> the form group that shows the message.
GROUP_OF = {"minor_access": "minor_grant", "minor_access.grant": "minor_grant",
            "minor_access.recipient": "minor_recipient", "minor_access.child_consent": "child_consent",
            "region": "care_unit_hsa_id"}
# The element an error-summary link moves focus to: the first option of a radio/checkbox group.
ANCHOR_OF = {"initiative": "initiative-patient", "actions": "actions-seal_journal",
             "minor_grant": "minor_grant-grant", "minor_recipient": "minor_recipient-minor"}


def _units(ad: Adapters, user: User) -> list[CareUnit]:
    """The care units the person may order for: their own region's (a person without a region: all)."""
    q = select(CareUnit).order_by(CareUnit.region, CareUnit.name)
    if user.region:
        q = q.where(CareUnit.region == user.region)
    with ad.db.session() as s:
        return list(s.scalars(q))


def form_values(order_type: str, form: FormData | None, user: User) -> dict[str, Any]:
    if form is None:
        return {"initiative": "care" if order_type in CARE_ONLY else "", "actions": [], "patient_personal_number": "",
                "patient_protected_identity": False, "guardian_personal_number": "",
                "guardian_protected_identity": False, "minor_grant": "",
                "minor_recipient": "", "child_consent": False, "identity_checked_in_person": False, "urgent": False,
                "callback_phone": "", "reason": "", "care_unit_hsa_id": user.unit_hsa_id or "",
                "idempotency_key": uuid4().hex, "confirm_duplicate": False}
    return {
        "initiative": "care" if order_type in CARE_ONLY else form_str(form, "initiative"),
        "actions": [a for a in form.getlist("actions") if isinstance(a, str)],
        "patient_personal_number": form_str(form, "patient_personal_number"),
        "patient_protected_identity": "patient_protected_identity" in form,
        "guardian_personal_number": form_str(form, "guardian_personal_number"),
        "guardian_protected_identity": "guardian_protected_identity" in form,
        "minor_grant": form_str(form, "minor_grant"), "minor_recipient": form_str(form, "minor_recipient"),
        "child_consent": "child_consent" in form, "identity_checked_in_person": "identity_checked_in_person" in form,
        "urgent": "urgent" in form, "callback_phone": form_str(form, "callback_phone"),
        "reason": form_str(form, "reason"), "care_unit_hsa_id": form_str(form, "care_unit_hsa_id"),
        "idempotency_key": form_str(form, "idempotency_key") or uuid4().hex,
        "confirm_duplicate": "confirm_duplicate" in form, "duplicate_shown": "duplicate_shown" in form,
    }


def to_raw(order_type: str, v: dict[str, Any], user: User, units: list[CareUnit]) -> dict[str, Any]:
    """The form's values as the API body, so both paths meet the same rules."""
    region_of = {u.hsa_id: u.region for u in units}
    raw: dict[str, Any] = {
        "order_type": order_type, "initiative": v["initiative"] or None,
        "patient_personal_number": v["patient_personal_number"],
        "patient_protected_identity": v["patient_protected_identity"], "urgent": v["urgent"], "reason": v["reason"],
        "care_unit_hsa_id": v["care_unit_hsa_id"],
        # Sent only when typed: a blank number is "not given" (the rules ask for it when the order is urgent).
        **({"callback_phone": v["callback_phone"]} if v.get("callback_phone") else {}),
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
    """Each field's label or legend exactly as the form shows it: the error summary uses the same words."""
    child = order_type in CARE_ONLY
    return {
        "patient_personal_number": f"{'Barnets' if child else 'Patientens'} personnummer eller samordningsnummer",
        "patient_protected_identity": f"{'Barnet' if child else 'Patienten'} har skyddade personuppgifter",
        "initiative": "Vems initiativ är beställningen?",
        "actions": ("Vad ska hävas?" if order_type == "restore_access" else "Åtgärd") + " (en eller båda)",
        "identity_checked_in_person": "Patientens identitet är kontrollerad vid personligt besök",
        "guardian_personal_number": "Vårdnadshavarens personnummer"
                                    + ("" if order_type == "minor_access" else " (den vars direktåtkomst tas bort)"),
        "guardian_protected_identity": "Vårdnadshavaren har skyddade personuppgifter",
        "minor_grant": "Ska tillgång ges eller tas bort?", "minor_recipient": "Vem gäller tillgången?",
        "child_consent": "Barnets samtycke", "urgent": "Beställningen är brådskande",
        "callback_phone": "Ditt telefonnummer för återuppringning",
        "reason": "Skäl till beställningen", "care_unit_hsa_id": "Beställande vårdenhet",
        "confirm_duplicate": "Jag har kontrollerat: det är en ny beställning, skicka den ändå",
    }


def _summary_text(label: str, message: str) -> str:
    if not label:
        return message
    return f"{label} {message}" if label.endswith("?") else f"{label}: {message}"


def form_page(request: Request, user: User, order_type: str, values: dict[str, Any],
              problems: list[Problem] | None = None, warnings: list[Problem] | None = None, status: int = 200,
              *, confirm: bool = False) -> Response:
    """`confirm`: the patient has an open order like this one; the form asks the clinician to confirm."""
    labels = field_labels(order_type)
    order = FORM_FIELDS[order_type]
    errors: dict[str, list[str]] = {}
    for p in problems or []:
        group = GROUP_OF.get(p.field, p.field)
        errors.setdefault(group if group in order else "", []).append(p.message)
    listed = sorted(errors.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else -1)
    # The field's own label or legend, then the message ("Vems initiativ är beställningen? Välj …").
    summary = summary_links([(ANCHOR_OF.get(g, g) if g else "order-form", "", _summary_text(labels.get(g, ""), m))
                             for g, msgs in listed for m in msgs])
    title = ("Fel: " if errors else "") + f"Ny beställning: {ORDER_TYPE_LABELS_SV[order_type]}"
    return render(request, "order_form.html.j2", {
        "user": user, "title": title, "order_type": order_type, "label": ORDER_TYPE_LABELS_SV[order_type],
        "help": ORDER_TYPE_HELP[order_type], "fields": order, "labels": labels, "v": values, "errors": errors,
        "summary": summary, "warnings": warnings or [], "units": _units(adapters(request), user),
        "care_only": order_type in CARE_ONLY, "confirm": confirm or bool(values.get("confirm_duplicate")),
        "reason_max": REASON_MAX,
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
    raw = to_raw(order_type, values, user, _units(ad, user))
    key = f"form-{values['idempotency_key'][:64]}"
    if not values["confirm_duplicate"]:
        held = await _held_for_confirmation(request, ad, user, order_type, values, raw, key)
        if held is not None:
            return held
    # The hidden idempotency token makes a double click (or a reload of the post) one order.
    try:
        result = await submit_raw(ad, raw, user, key)
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
    codes = ",".join(w.code for w in result.warnings if w.code != DUPLICATE)  # confirmed already
    target = f"/bestallningar/{result.body['reference']}/kvitto" + (f"?varningar={quote(codes)}" if codes else "")
    return RedirectResponse(target, status_code=303)




async def _held_for_confirmation(request: Request, ad: Adapters, user: User, order_type: str,
                                 values: dict[str, Any], raw: dict[str, Any], key: str) -> Response | None:
    """The form again, nothing stored, when the patient has an open order of the same type with an
    overlapping action (or the body has errors); None to go on and submit. A token that already made an
    order goes on at once: that is the same form sent twice, and the submit replays the first answer."""
    if await run_in_threadpool(orders.by_idempotency_key, ad, f"{user.hsa_id}:{key}") is not None:
        return None
    checked = await run_in_threadpool(lambda: orders.check(ad, raw, now(request), user.hsa_id, intake=True))
    if not checked.ok:
        return form_page(request, user, order_type, values, checked.errors, checked.warnings, 422)
    if not any(w.code == DUPLICATE for w in checked.warnings):
        return None
    if await run_in_threadpool(orders.by_idempotency_key, ad, f"{user.hsa_id}:{key}") is not None:
        return None  # a double click: the first post's order (the duplicate seen) came in meanwhile; replay it
    # Shown once already and sent again without the box ticked: say so at the box and in the summary.
    unticked = [Problem(field="confirm_duplicate", code="required", message=CONFIRM_DUPLICATE)] \
        if values.get("duplicate_shown") else None
    return form_page(request, user, order_type, values, unticked, checked.warnings, status=409, confirm=True)
