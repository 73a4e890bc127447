"""What `/openapi.json` says each operation can answer, in one place (issue 16, part 5).

- `responses(404, 409, ...)`: the error answers of a route, in the contract's error shape, for its decorator.
- `finish_openapi(schema, regions)`: what holds for every operation of the API, added to FastAPI's schema once:
  every /api operation can answer 401 (no identity), 403 (role, region, four eyes, CSRF) and 503 (the orders
  database is down; nothing stored), every post 413 (too large) and 415 (not JSON), every operation with a path
  parameter 404 and with parameters or a body 422; how a request identifies itself (the SSO proxy's header or
  the embedded login's cookie); the enumerations the code has (`region`, `status`, `order_type`) and the
  reference's shape; free text's allowed characters; and a JSON body for the posts that carry none (the
  CSRF rule wants JSON: `{}`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from models.routine import Stage
from models.schemas import ORDER_TYPES, ErrorResponse
from models.status import OrderStatus
from models.text import BIDI_CONTROLS

DESCRIPTIONS: dict[int, str] = {
    400: "Felaktig förfrågan (en kropp som inte kan läsas)",
    401: "Ingen identitet (varken SSO-huvud från betrodd proxy eller giltig inloggning)",
    403: "Fel roll, annan region eller enhet, egen beställning (fyra ögon) eller CSRF",
    404: "Finns inte",
    409: "Beställningen är inte i rätt status för detta",
    413: "För stor kropp",
    415: "Kroppen är inte JSON (Content-Type: application/json)",
    422: "Fel i fälten, alla på en gång",
    503: "Beställningsdatabasen svarar inte: inget sparades, försök igen (Retry-After)",
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
# Free text a person types: no control characters but tab and line breaks, no direction overrides
# (models/schemas.py is_plain_text, models/text.py).
_BIDI = "".join(f"\\u{ord(c):04x}" for c in sorted(BIDI_CONTROLS))
PLAIN_TEXT = f"^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f{_BIDI}]*$"
REFERENCE_PATTERN = "^[Rr][Oo]-[0-9]{4}-[0-9]{6}$"  # models/reference.py REFERENCE (case-insensitive)
HSA_ID_PATTERN = "^([A-Za-z0-9][A-Za-z0-9-]{0,63})?$"  # forms/pages/queues.py HSA_SHAPE, any case
FREE_TEXT_FIELDS = ("reason", "rationale", "comment", "note", "system_reference")
EMPTY_JSON_BODY = {"required": True, "content": {"application/json": {
    "schema": {"description": "Ingen data behövs: skicka {} som JSON (CSRF-regeln kräver JSON)."}}}}


def responses(*codes: int, **described: Any) -> dict[int | str, dict[str, Any]]:
    """The error answers `codes` in the contract's shape, for a route decorator's `responses=`."""
    out: dict[int | str, dict[str, Any]] = {c: {"model": ErrorResponse, "description": DESCRIPTIONS[c]} for c in codes}
    return out


def _codes_for(path: str, method: str, op: dict[str, Any]) -> list[int]:
    codes = [401, 403, 503]
    params = op.get("parameters", [])
    if any(p.get("in") == "path" for p in params):
        codes.append(404)
    if params or "requestBody" in op:
        codes.append(422)
    if method == "post":
        codes += [400, 413, 415]  # 400: a body that is not even text (FastAPI cannot decode it)
    return codes


def _add_responses(path: str, method: str, op: dict[str, Any]) -> None:
    answers = op.setdefault("responses", {})
    for code in _codes_for(path, method, op):
        answers.setdefault(str(code), {"description": DESCRIPTIONS[code]})
    for code, answer in answers.items():
        if code.isdigit() and int(code) >= 400:
            answer.setdefault("description", DESCRIPTIONS.get(int(code), "Fel"))
            if not answer.get("content"):
                answer["content"] = {"application/json": {"schema": ERROR_REF}}


# Parameters whose schema is fixed, by (name, where).
FIXED_PARAMS: dict[tuple[Any, Any], dict[str, Any]] = {
    ("reference", "path"): {"type": "string", "pattern": REFERENCE_PATTERN, "title": "Reference"},
    ("stage", "path"): {"type": "string", "enum": [s.value for s in Stage], "title": "Stage"},
    # A queue's filters (empty: all): an order type, a care unit's HSA-id.
    ("type", "query"): {"type": "string", "enum": ["", *ORDER_TYPES], "title": "Order type"},
    ("unit", "query"): {"type": "string", "pattern": HSA_ID_PATTERN, "title": "Care unit"},
    # The administrators' search: a reference or a part of one (a personal number is searched in the log
    # extract, where the search is logged: refused with 422 here).
    ("q", "query"): {"type": "string", "pattern": "^([A-Za-z0-9-]{1,20})?$", "title": "Reference or part of one"},
    # A statistics period's first and last day (empty: the default period).
    **{(day, "query"): {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "maxLength": 0}],
                        "title": day} for day in ("from", "to")},
}


def _param_schema(param: dict[str, Any], regions: list[str]) -> None:
    name, where = param.get("name"), param.get("in")
    enums = {"region": regions, "status": [s.value for s in OrderStatus], "order_type": list(ORDER_TYPES)}
    if name in enums and where == "path":
        param["schema"] = {"type": "string", "enum": enums[name], "title": param.get("schema", {}).get("title", name)}
    elif name in enums and where == "query":
        # An empty filter is no filter (the admin pages' "Alla" sends `region=`).
        param["schema"] = {"type": "string", "enum": ["", *enums[name]],
                           "title": param.get("schema", {}).get("title", name)}
    elif name == "Idempotency-Key" and where == "header":
        schema = param.get("schema", {})
        for option in schema.get("anyOf", [schema]):  # FastAPI's `str | None`: the string gets the shape
            if option.get("type") == "string":
                option["pattern"] = "^[\\x21-\\x7e]{1,120}$"
    elif (name, where) in FIXED_PARAMS:
        param["schema"] = copy.deepcopy(FIXED_PARAMS[(name, where)])


def _component_schemas(components: dict[str, Any], regions: list[str]) -> None:
    for model in components.values():
        props = model.get("properties", {})
        for name in FREE_TEXT_FIELDS:
            prop = props.get(name)
            if isinstance(prop, dict) and prop.get("type") == "string":
                prop["pattern"] = PLAIN_TEXT
    order = components.get("OrderRequest", {}).get("properties", {})
    if "region" in order:
        order["region"] = {"type": "string", "enum": regions, "title": "Region"}
    if "OrderRequest" in components:
        # Printing a filled-in paper form takes an incomplete order: what is missing is left blank on paper.
        printable = copy.deepcopy(components["OrderRequest"])
        printable.pop("required", None)
        for name, prop in list(printable.get("properties", {}).items()):  # null: left blank too
            printable["properties"][name] = {"anyOf": [prop, {"type": "null"}], "title": prop.get("title", name)}
        printable["title"] = "PrintableOrder"
        components["PrintableOrder"] = printable
    view = components.get("OrderView", {}).get("properties", {})
    if "status" in view:
        view["status"] = {"type": "string", "enum": [s.value for s in OrderStatus], "title": "Status"}


def _security(schema: dict[str, Any]) -> None:
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["sso"] = {"type": "apiKey", "in": "header", "name": "X-Remote-User",
                      "description": "HSA-id, satt av SSO-proxyn (SITHS); gäller bara från betrodda adresser"}
    schemes["session"] = {"type": "apiKey", "in": "cookie", "name": "ro_session",
                          "description": "Den inbyggda inloggningens sessionskaka (poster kräver X-CSRF-Token)"}


def finish_openapi(schema: dict[str, Any], regions: Iterable[str]) -> dict[str, Any]:
    codes = list(regions)
    _security(schema)
    _component_schemas(schema.get("components", {}).get("schemas", {}), codes)
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                _param_schema(param, codes)
            if not path.startswith("/api/"):
                continue
            op["security"] = [{"sso": []}, {"session": []}]
            if method == "post" and "requestBody" not in op:
                op["requestBody"] = EMPTY_JSON_BODY
            _add_responses(path, method, op)
    return schema
