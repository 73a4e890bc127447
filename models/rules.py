"""The rule engine: every error and warning of an order at once, and the stages it needs.

Pure functions. The caller supplies what the rules need to know about the world in a `RuleContext`:
the time, the care-unit directory, the regions' working hours and (for restores) the patient's
current access state in the 1177 registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from models import personnummer, phone
from models.access import AccessState
from models.calendar import WorkingHours, is_office_hours, local
from models.schemas import (
    ACTIONS,
    INITIATIVES,
    ORDER_TYPES,
    REASON_MAX,
    MinorAccess,
    OrderRequest,
    Problem,
    is_plain_text,
)
from models.text import BIDI_CODE, BIDI_MESSAGE, has_bidi_control

MESSAGES: dict[str, str] = {
    "required": "Fältet måste fyllas i.",
    "invalid_value": "Ogiltigt värde.",
    "invalid_personal_number": "Ogiltigt personnummer eller samordningsnummer (kontrollera format, datum och kontrollsiffra).",
    "not_aged_13_to_15": "Barnet måste vara 13, 14 eller 15 år i dag.",
    "guardian_is_patient": "Vårdnadshavaren kan inte vara samma person som patienten.",
    "reason_too_long": f"Motiveringen får vara högst {REASON_MAX} tecken.",
    "unknown_care_unit": "Vårdenheten finns inte i katalogen.",
    "care_unit_other_region": "Du kan bara beställa för vårdenheter i din egen region.",
    BIDI_CODE: BIDI_MESSAGE,
    "care_only": "Denna beställning kan bara göras på vårdens initiativ.",
    "identity_check_required": "Patientens egen försegling kan bara hävas efter identitetskontroll vid personligt besök.",
    "consent_required": "Barnets samtycke krävs för att ge vårdnadshavare tillgång.",
    "protected_identity": "Vårdnadshavare kan inte få tillgång när barnet eller vårdnadshavaren har skyddade "
                          "personuppgifter.",
    "care_initiated_restriction": "En begränsning gjord på vårdens initiativ kan inte hävas på patientens begäran.",
    "nothing_to_restore": "Det finns ingen sådan begränsning att häva för patienten.",
    "invalid_phone": "Ange ett svenskt telefonnummer, till exempel 070-123 45 67 eller 010-103 60 00.",
    "inconsistent_assessment": "Du har angett att det inte finns risk för men. Då kan beslutet inte vara att "
                               "begränsa åtkomsten: ändra beslutet eller bedömningen.",
}
# `required`, said for the field it is about (the form shows these beside the field and in its summary).
REQUIRED_SV: dict[str, str] = {
    "order_type": "Välj typ av beställning.",
    "initiative": "Välj vems initiativ beställningen är.",
    "region": "Välj region.",
    "patient_personal_number": "Ange patientens personnummer eller samordningsnummer.",
    "guardian_personal_number": "Ange vårdnadshavarens personnummer.",
    "care_unit_hsa_id": "Välj beställande vårdenhet.",
    "minor_access": "Ange om tillgång ska ges eller tas bort, och för vem.",
    "callback_phone": "Ange ditt telefonnummer: det krävs när beställningen är brådskande.",
    "rationale": "Skriv en motivering till beslutet: den krävs.",
}
CHILD_REQUIRED_SV = "Ange barnets personnummer eller samordningsnummer."
WARNINGS: dict[str, str] = {
    "lock_without_seal": "En låst inloggning hindrar inte att 1177 journal nås via direktlänk. Försegla journalen också för att ta bort all åtkomst.",
    "protected_identity": "Patienten eller vårdnadshavaren har skyddade personuppgifter: hantera per telefon, "
                          "aldrig via e-post eller ärende.",
    "outside_office_hours": "Beställningen kom utanför kontorstid och handläggs nästa arbetsdag.",
    "duplicate_open_order": "Det finns redan en öppen beställning av samma slag för patienten. Kontrollera att "
                            "det inte är samma beställning en gång till.",
}
# The warning as validate and submit give it: it names the open orders (their references, nothing else).
DUPLICATE_SV = ("Det finns redan en öppen beställning av samma slag för patienten: {references}. Kontrollera att "
                "det inte är samma beställning en gång till.")


@dataclass(frozen=True)
class OpenOrder:
    """An order of the patient's that is not finished, as the duplicate check needs it."""
    reference: str
    order_type: str
    actions: tuple[str, ...] = ()
    guardian_pnr: str | None = None
    minor_recipient: str | None = None


@dataclass(frozen=True)
class RuleContext:
    now: datetime
    care_units: Mapping[str, str]          # HSA-id -> region code
    region_hours: Mapping[str, WorkingHours]  # region code -> working hours
    access: AccessState | None = None      # the patient's current state, when known
    # The patient's open orders (the duplicate warning); empty where nobody looked (revalidation, print).
    open_orders: Sequence[OpenOrder] = ()
    # Digital intake (the API and the web form): an urgent order needs the orderer's callback number. Not
    # for a stored order checked again, an order made urgent later, or a signed paper order.
    callback_phone_required: bool = False
    # The orderer's own region when the orderer is a clinician of one region: they order only for its units.
    orderer_region: str | None = None


@dataclass
class CheckResult:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    order: OrderRequest | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def _err(result: CheckResult, fieldname: str, code: str, message: str | None = None) -> None:
    if message is None and code == "required":
        message = REQUIRED_SV.get(fieldname)
    result.errors.append(Problem(field=fieldname, code=code, message=message or MESSAGES[code]))


def _warn(result: CheckResult, code: str, fieldname: str = "", message: str | None = None) -> None:
    result.warnings.append(Problem(field=fieldname, code=code, message=message or WARNINGS[code]))


CHILD_TYPES = ("block_guardian", "minor_access")  # the patient is a child (the forms say "Barnets")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or v == []


def _choice(raw: Mapping[str, Any], name: str, choices: tuple[str, ...], r: CheckResult) -> str | None:
    v = raw.get(name)
    if _blank(v):
        _err(r, name, "required")
        return None
    if not isinstance(v, str) or v not in choices:
        _err(r, name, "invalid_value", f"Ogiltigt värde. Tillåtna värden: {', '.join(choices)}.")
        return None
    return v


def _flag(raw: Mapping[str, Any], name: str, r: CheckResult) -> bool:
    v = raw.get(name, False)
    if not isinstance(v, bool):  # null too: the schema says boolean (leave the field out for false)
        _err(r, name, "invalid_value", "Ange sant eller falskt.")
        return False
    return v


def _person(raw: Mapping[str, Any], name: str, ctx: RuleContext, r: CheckResult,
            missing: str | None = None) -> personnummer.PersonalNumber | None:
    v = raw.get(name)
    if _blank(v):
        _err(r, name, "required", missing)
        return None
    if not isinstance(v, str):
        _err(r, name, "invalid_personal_number")
        return None
    try:
        return personnummer.parse(v, local(ctx.now).date())
    except personnummer.InvalidPersonalNumber:
        _err(r, name, "invalid_personal_number")
        return None


def _actions(raw: Mapping[str, Any], r: CheckResult) -> list[str] | None:
    v = raw.get("actions")
    if _blank(v):
        _err(r, "actions", "required", "Välj minst en åtgärd.")
        return None
    if not isinstance(v, list) or not all(isinstance(a, str) and a in ACTIONS for a in v):
        _err(r, "actions", "invalid_value", f"Ogiltig åtgärd. Tillåtna värden: {', '.join(ACTIONS)}.")
        return None
    return sorted(set(v), key=ACTIONS.index)


def _minor_access(raw: Mapping[str, Any], r: CheckResult) -> MinorAccess | None:
    v = raw.get("minor_access")
    if _blank(v):
        _err(r, "minor_access", "required")
        return None
    if not isinstance(v, Mapping):
        _err(r, "minor_access", "invalid_value")
        return None
    ok = True
    if v.get("grant") is None:
        _err(r, "minor_access.grant", "required", "Ange om tillgång ska ges eller tas bort.")
        ok = False
    elif not isinstance(v.get("grant"), bool):
        _err(r, "minor_access.grant", "invalid_value")
        ok = False
    if _blank(v.get("recipient")):
        _err(r, "minor_access.recipient", "required", "Ange vem som ska få eller förlora tillgång.")
        ok = False
    elif v.get("recipient") not in ("minor", "guardian"):
        _err(r, "minor_access.recipient", "invalid_value", "Ogiltigt värde. Tillåtna värden: minor, guardian.")
        ok = False
    consent = v.get("child_consent", False)
    if consent is not None and not isinstance(consent, bool):
        _err(r, "minor_access.child_consent", "invalid_value")
        ok = False
    if not ok:
        return None
    return MinorAccess(grant=v["grant"], recipient=v["recipient"], child_consent=bool(consent))


@dataclass
class _Fields:
    """The body's fields as far as they were valid (None where a field had an error)."""
    order_type: str | None = None
    initiative: str | None = None
    region: str | None = None
    patient: personnummer.PersonalNumber | None = None
    protected: bool = False
    guardian_protected: bool = False
    identity_checked: bool = False
    urgent: bool = False
    reason: str = ""
    unit: str | None = None
    actions: list[str] | None = field(default_factory=list)
    minor: MinorAccess | None = None
    guardian: personnummer.PersonalNumber | None = None
    to_guardian: bool = False
    callback_phone: str | None = None


def check_order(raw: Mapping[str, Any], ctx: RuleContext) -> CheckResult:
    """Check a raw request body. Returns all errors and warnings; `order` is set only when there are no errors."""
    r = CheckResult()
    if not isinstance(raw, Mapping):
        _err(r, "", "invalid_value", "Förväntade ett JSON-objekt.")
        return r
    f = _common_fields(raw, ctx, r)
    _type_fields(raw, ctx, f, r)
    _strict_types(raw, r)
    _cross_field_rules(raw, ctx, f, r)
    _warnings(ctx, f, r)
    if r.ok:
        r.order = _request(f)
    return r


def _common_fields(raw: Mapping[str, Any], ctx: RuleContext, r: CheckResult) -> _Fields:
    f = _Fields(order_type=_choice(raw, "order_type", ORDER_TYPES, r),
                initiative=_choice(raw, "initiative", INITIATIVES, r),
                region=_choice(raw, "region", tuple(ctx.region_hours), r),
                patient=_person(raw, "patient_personal_number", ctx, r,
                                CHILD_REQUIRED_SV if raw.get("order_type") in CHILD_TYPES else None),
                protected=_flag(raw, "patient_protected_identity", r),
                guardian_protected=_flag(raw, "guardian_protected_identity", r),
                identity_checked=_flag(raw, "identity_checked_in_person", r),
                urgent=_flag(raw, "urgent", r))
    f.reason = _reason(raw, r)
    f.unit = _care_unit(raw, ctx, f.region, r)
    f.callback_phone = _callback_phone(raw, f.urgent, ctx, r)
    return f


def _callback_phone(raw: Mapping[str, Any], urgent: bool, ctx: RuleContext, r: CheckResult) -> str | None:
    v = raw.get("callback_phone")
    if _blank(v):
        if urgent and ctx.callback_phone_required:
            _err(r, "callback_phone", "required")
        return None
    number = phone.normalise(v) if isinstance(v, str) else None
    if number is None:
        _err(r, "callback_phone", "invalid_phone")
    return number


def callback_phone_missing(raw: Any) -> bool:
    """An urgent body without a callback number: what digital intake refuses (`callback_phone_required`)."""
    return isinstance(raw, Mapping) and raw.get("urgent") is True and _blank(raw.get("callback_phone"))


def _reason(raw: Mapping[str, Any], r: CheckResult) -> str:
    if "reason" not in raw:
        return ""
    reason = raw["reason"]
    if not isinstance(reason, str):  # null too: the schema says string (leave the field out for none)
        _err(r, "reason", "invalid_value")
        return ""
    if len(reason) > REASON_MAX:
        _err(r, "reason", "reason_too_long")
        return reason
    if has_bidi_control(reason):
        _err(r, "reason", BIDI_CODE)
        return ""
    if not is_plain_text(reason):
        _err(r, "reason", "invalid_value")
        return ""
    return reason


def _care_unit(raw: Mapping[str, Any], ctx: RuleContext, region: str | None, r: CheckResult) -> str | None:
    unit = raw.get("care_unit_hsa_id")
    if _blank(unit):
        _err(r, "care_unit_hsa_id", "required")
        return None
    if not isinstance(unit, str) or unit.strip().upper() not in ctx.care_units:
        _err(r, "care_unit_hsa_id", "unknown_care_unit")
        return None
    unit = unit.strip().upper()
    if ctx.orderer_region and ctx.care_units[unit] != ctx.orderer_region:
        _err(r, "care_unit_hsa_id", "care_unit_other_region")
        return None
    if region and ctx.care_units[unit] != region:
        _err(r, "region", "invalid_value", "Vårdenheten hör inte till den valda regionen.")
    return unit


def _type_fields(raw: Mapping[str, Any], ctx: RuleContext, f: _Fields, r: CheckResult) -> None:
    """The fields only some order types have: actions, the minor-access choice, the guardian."""
    if f.order_type in ("seal_or_lock", "restore_access"):
        f.actions = _actions(raw, r)
    if f.order_type == "minor_access":
        f.minor = _minor_access(raw, r)
    # From the raw recipient, so a missing guardian is reported even when another minor_access field is wrong.
    raw_minor = raw.get("minor_access")
    f.to_guardian = isinstance(raw_minor, Mapping) and raw_minor.get("recipient") == "guardian"
    if f.order_type == "block_guardian" or (f.order_type == "minor_access" and f.to_guardian):
        f.guardian = _person(raw, "guardian_personal_number", ctx, r)
        if f.guardian and f.patient and f.guardian.digits == f.patient.digits:
            _err(r, "guardian_personal_number", "guardian_is_patient")
    else:
        f.guardian_protected = False  # meaningless without a guardian on the order


# The JSON types `/openapi.json` declares for the body's fields (OrderRequest). A field the order type does not
# use is still refused when it has the wrong type: the API accepts only what it says it accepts.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "actions": (list,), "patient_personal_number": (str,), "guardian_personal_number": (str, type(None)),
    "minor_access": (Mapping, type(None)), "reason": (str,), "care_unit_hsa_id": (str,),
    "patient_protected_identity": (bool,), "guardian_protected_identity": (bool,),
    "identity_checked_in_person": (bool,), "urgent": (bool,)}
_MINOR_TYPES: dict[str, tuple[type, ...]] = {"grant": (bool,), "recipient": (str,), "child_consent": (bool,)}


def _strict_types(raw: Mapping[str, Any], r: CheckResult) -> None:
    """Wrong types in fields no other rule looked at (every problem once)."""
    reported = {e.field.split(".")[0] for e in r.errors}
    for name, types in _JSON_TYPES.items():
        if name in raw and name not in reported and not isinstance(raw[name], types):
            _err(r, name, "invalid_value")
    actions = raw.get("actions")
    if "actions" not in reported and isinstance(actions, list) and not all(a in ACTIONS for a in actions):
        _err(r, "actions", "invalid_value", f"Ogiltig åtgärd. Tillåtna värden: {', '.join(ACTIONS)}.")
    minor = raw.get("minor_access")
    if "minor_access" in reported or not isinstance(minor, Mapping):
        return
    bad = [k for k in minor if k not in _MINOR_TYPES] + [
        k for k, types in _MINOR_TYPES.items() if k in minor and not isinstance(minor[k], types)]
    if bad or not {"grant", "recipient"} <= set(minor) or minor.get("recipient") not in ("minor", "guardian"):
        _err(r, "minor_access", "invalid_value")


def _cross_field_rules(raw: Mapping[str, Any], ctx: RuleContext, f: _Fields, r: CheckResult) -> None:
    if f.order_type in ("block_guardian", "minor_access") and f.initiative == "patient":
        _err(r, "initiative", "care_only")
    if f.order_type == "minor_access":
        _minor_rules(raw.get("minor_access"), ctx, f, r)
    if f.order_type == "restore_access" and f.actions:
        _restore_rules(f.actions, f.initiative, f.identity_checked, ctx.access, r)


def _minor_rules(raw_minor: Any, ctx: RuleContext, f: _Fields, r: CheckResult) -> None:
    if f.patient and not 13 <= f.patient.age_on(local(ctx.now).date()) <= 15:
        _err(r, "patient_personal_number", "not_aged_13_to_15")
    if f.to_guardian and isinstance(raw_minor, Mapping) and raw_minor.get("grant") is not False:
        if raw_minor.get("child_consent") is not True:
            _err(r, "minor_access.child_consent", "consent_required")
        if f.protected or f.guardian_protected:  # SEED-2: the child *or* the guardian
            _err(r, "guardian_personal_number", "protected_identity")


def _warnings(ctx: RuleContext, f: _Fields, r: CheckResult) -> None:
    if f.order_type == "seal_or_lock" and f.actions == ["lock_login"]:
        _warn(r, "lock_without_seal", "actions")
    if f.protected:
        _warn(r, "protected_identity", "patient_protected_identity")
    if f.guardian_protected and not any(e.code == "protected_identity" for e in r.errors):
        _warn(r, "protected_identity", "guardian_protected_identity")
    if f.region and not f.urgent and not is_office_hours(ctx.now, ctx.region_hours[f.region]):
        _warn(r, "outside_office_hours")
    duplicates = [o.reference for o in ctx.open_orders if _overlaps(f, o)]
    if duplicates:
        _warn(r, "duplicate_open_order", "", DUPLICATE_SV.format(references=", ".join(duplicates)))


def _overlaps(f: _Fields, o: OpenOrder) -> bool:
    """The same patient's open order asks for (part of) the same thing: the same type and an action both
    name; for a guardian block the same guardian; for minor access the same recipient (and guardian)."""
    if o.order_type != f.order_type:
        return False
    if f.order_type in ("seal_or_lock", "restore_access"):
        return bool(set(o.actions) & set(f.actions or ()))
    guardian = f.guardian.digits if f.guardian else None
    if f.order_type == "block_guardian":
        return guardian is None or o.guardian_pnr in (None, guardian)
    if f.order_type == "minor_access" and f.minor is not None:
        return o.minor_recipient == f.minor.recipient and (f.minor.recipient == "minor" or o.guardian_pnr == guardian)
    return False


def _request(f: _Fields) -> OrderRequest:
    assert f.order_type and f.initiative and f.patient and f.region and f.unit
    return OrderRequest(
        order_type=f.order_type,  # type: ignore[arg-type]
        initiative=f.initiative,  # type: ignore[arg-type]
        actions=f.actions or [],  # type: ignore[arg-type]
        patient_personal_number=f.patient.digits,
        patient_protected_identity=f.protected,
        guardian_personal_number=f.guardian.digits if f.guardian else None,
        guardian_protected_identity=f.guardian_protected,
        minor_access=f.minor,
        identity_checked_in_person=f.identity_checked,
        urgent=f.urgent,
        reason=f.reason,
        care_unit_hsa_id=f.unit,
        region=f.region,
        callback_phone=f.callback_phone,
    )


def _restore_rules(actions: list[str], initiative: str | None, identity_checked: bool,
                   access: AccessState | None, r: CheckResult) -> None:
    if initiative == "patient" and "seal_journal" in actions and not identity_checked:
        _err(r, "identity_checked_in_person", "identity_check_required")
    if access is None:
        return
    missing = [a for a in actions if access.restriction_for(a) is None]
    if missing:
        _err(r, "actions", "nothing_to_restore")
    if initiative == "patient" and any(
        (rs := access.restriction_for(a)) is not None and rs.initiative == "care" for a in actions
    ):
        _err(r, "initiative", "care_initiated_restriction")


# --- a harm assessment ----------------------------------------------------------------------------------

def restricts_access(order_type: str, minor_grant: bool | None) -> bool | None:
    """Whether carrying the order out takes access away (a seal or lock, a guardian block, revoking a minor's
    access), gives it back (a restore, granting a minor's access), or is not known (None)."""
    if order_type in ("seal_or_lock", "block_guardian"):
        return True
    if order_type == "restore_access" or (order_type == "minor_access" and minor_grant is True):
        return False
    return True if order_type == "minor_access" and minor_grant is False else None


def check_assessment(body: Mapping[str, Any], *, restricts: bool | None,
                     rationale_required: bool = True) -> list[Problem]:
    """What makes a harm assessment unusable beyond its types (the schema checks those): no rationale, or
    "no risk of harm" with the decision to go ahead with an order that takes access away (`restricts`: for a
    restore, "no risk of harm" is exactly why access may be given back). Every problem at once. The API and
    the assessment form check both; the service layer checks the consistency again before storing (orders
    decided by the routine's own callers, as the review flow, give no rationale requirement)."""
    r = CheckResult()
    rationale = body.get("rationale")
    if rationale_required and (not isinstance(rationale, str) or not rationale.strip()):
        _err(r, "rationale", "required")
    if restricts and body.get("harm_found") is False and body.get("decision") == "restrict":
        _err(r, "decision", "inconsistent_assessment")
    return r.errors
