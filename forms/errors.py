"""The contract's error shape, and the checks every route makes before it touches the database."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from models.reference import REFERENCE
from models.schemas import Problem


class ApiError(Exception):
    """An answer in the contract's error shape: `{"errors": [{"field", "code", "message"}]}`."""

    def __init__(self, status: int, code: str, message: str, field: str = "",
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.extra = status, code, message, field, extra or {}

    def response(self) -> JSONResponse:
        body = {"errors": [{"field": self.field, "code": self.code, "message": self.message}], **self.extra}
        return JSONResponse(body, status_code=self.status)


NOT_FOUND = "Beställningen finns inte."


def problems(items: list[Problem]) -> list[dict[str, str]]:
    return [p.model_dump() for p in items]


def checked_reference(reference: str) -> str:
    """The path's reference, normalised; 404 before any database read for anything else (a path can hold a
    personal number, or a NUL that PostgreSQL refuses)."""
    if not REFERENCE.fullmatch(reference.strip()):
        raise ApiError(404, "not_found", NOT_FOUND)
    return reference.strip().upper()


async def json_body(request: Request) -> Any:
    """The raw JSON body; the rule engine checks it field by field (every problem at once)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "Skicka JSON (Content-Type: application/json).")
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
        raise ApiError(422, "invalid_value", "Ogiltig JSON.") from None
