"""The form app: HTML pages for people and the JSON API of the contract, in one FastAPI application.

`uvicorn forms.app:app` serves it with the adapters the composition root builds from the environment
(flows/bootstrap.py); `create_app(ad)` builds one with the adapters it is given (tests).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forms import admin_api, admin_routes, api, health, pages, paper_routes, queue_api, urgent_routes
from forms.auth import NotAllowed, NotAuthenticated, audit_refusal, check_session_settings, csrf_guard
from forms.deps import adapters
from forms.errors import ApiError
from forms.pages.common import error_page, render_plain_error
from forms.responses import finish_openapi
from models.schemas import OrderRequest
from models.text import BIDI_CODE, BIDI_MESSAGE
from tasks.adapters import Adapters
from tasks.adapters.doctor import refuse_to_start_if_broken

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024  # an order is a few kB; the reason is at most 2000 characters
STATIC = Path(__file__).resolve().parent / "static"
TOO_LARGE = "Förfrågan är för stor (högst 64 KiB)."

# Same-origin only, no inline script or style: free text can never become code on our pages.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class _TooLarge(Exception):
    pass


def _is_too_large(exc: BaseException) -> bool:
    # Task groups in middleware may wrap the signal in an exception group.
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_too_large(e) for e in exc.exceptions)
    return isinstance(exc, _TooLarge)


class SecurityHeaders:
    """Adds SECURITY_HEADERS, and `Cache-Control: no-store` outside /static (answers may hold personal data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = dict(SECURITY_HEADERS)
        if not scope["path"].startswith("/static/"):
            extra["Cache-Control"] = "no-store"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k.lower().encode(), v.encode()) for k, v in extra.items() if k.lower().encode() not in present]
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, by Content-Length up front or by counting a chunked stream."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY, demo: bool = False) -> None:
        self.app, self.limit, self.demo = app, limit, demo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(scope, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BaseException as exc:
            if not _is_too_large(exc):
                raise
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if scope["path"].startswith("/api/"):
            body = json.dumps({"errors": [{"field": "", "code": "body_too_large", "message": TOO_LARGE}]},
                              ensure_ascii=False).encode()
            ctype = b"application/json"
        else:
            body = render_plain_error(413, "För stor förfrågan", TOO_LARGE, demo=self.demo).encode()
            ctype = b"text/html; charset=utf-8"
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", ctype), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _wants_json(request: Request) -> bool:
    # "/api" too: a client's URL normaliser turns /api/orders/.. into it, and an API client wants JSON.
    return request.url.path.startswith("/api/") or request.url.path in ("/api", "/healthz")


def _error_json(status: int, code: str, message: str, field: str = "") -> JSONResponse:
    return JSONResponse({"errors": [{"field": field, "code": code, "message": message}]}, status_code=status)


def _validation_problems(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        missing = e.get("type") == "missing"
        if e.get("type") == BIDI_CODE:  # free text with direction overrides (models/text.py)
            out.append({"field": ".".join(loc), "code": BIDI_CODE, "message": BIDI_MESSAGE})
            continue
        out.append({"field": ".".join(loc), "code": "required" if missing else "invalid_value",
                    "message": "Fältet måste fyllas i." if missing else "Ogiltigt värde."})
    return out


def _allowed_methods(request: Request) -> str:
    """The methods `/openapi.json` declares for the path. A path such as /api/orders/validate is also
    /api/orders/{reference}: a fixed path's own methods win."""
    paths: dict[str, dict[str, Any]] = request.app.openapi().get("paths", {})
    path = request.url.path
    if path in paths:
        return ", ".join(sorted(m.upper() for m in paths[path]))
    methods = {m.upper() for template, ops in paths.items()
               if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path) for m in ops}
    return ", ".join(sorted(methods))


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        if _wants_json(request):
            return exc.response()
        return error_page(request, exc.status, exc.message)

    @app.exception_handler(NotAuthenticated)
    async def _no_identity(request: Request, exc: NotAuthenticated) -> Response:
        if _wants_json(request):
            return _error_json(401, "not_authenticated", "Du är inte inloggad (ingen identitet).")
        if adapters(request).settings.embedded_login:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
        return error_page(request, 401, "Du är inte inloggad. Logga in med SITHS-kort och försök igen.")

    @app.exception_handler(NotAllowed)
    async def _not_allowed(request: Request, exc: NotAllowed) -> Response:
        await run_in_threadpool(audit_refusal, request, exc)  # refusals at the role gate are audited too
        if _wants_json(request):
            return _error_json(403, exc.code, exc.message)
        return error_page(request, 403, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return JSONResponse({"errors": _validation_problems(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        messages = {404: "Sidan finns inte.", 405: "Metoden är inte tillåten.",
                    415: "Skicka JSON (Content-Type: application/json)."}
        message = messages.get(exc.status_code, "Förfrågan kunde inte behandlas.")
        if _wants_json(request):
            code = {404: "not_found", 415: "unsupported_media_type"}.get(exc.status_code, "http_error")
            response: Response = _error_json(exc.status_code, code, message)
        else:
            response = error_page(request, exc.status_code, message)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # every method the path has, not only its first route's (Starlette's)
            response.headers["Allow"] = _allowed_methods(request)
        return response

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> Response:
        # The unit of work rolled back: nothing of the request was stored, so trying again is safe.
        log.warning("orders database unavailable on %s %s: %s", request.method, request.url.path,
                    type(exc.orig).__name__ if exc.orig else type(exc).__name__)
        message = ("Beställningsdatabasen svarar inte just nu. Inget sparades. Försök igen om en stund, "
                   "eller använd pappersblanketten (reservrutin).")
        if _wants_json(request):
            response: Response = _error_json(503, "database_unavailable", message)
        else:
            response = error_page(request, 503, message)
        response.headers["Retry-After"] = "30"
        return response

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        message = "Ett tekniskt fel inträffade. Försök igen, eller använd pappersblanketten (reservrutin)."
        if _wants_json(request):
            return _error_json(500, "internal_error", message)
        return error_page(request, 500, message)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus OrderRequest, which documents the raw body of POST /api/orders(/validate)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    order = OrderRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(order.pop("$defs", {}))
    components["OrderRequest"] = order
    app.openapi_schema = finish_openapi(schema, app.state.adapters.regions)  # forms/responses.py
    return schema


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The urgent dispatcher in the app process too (every RO_APP_DISPATCH_SECONDS, default 15, 0 = off).

    In production the only other dispatcher is the `housekeeping` deployment, which needs the Prefect
    server and a worker: with either down, no missed callback would be escalated. This one needs the
    orders database and SMTP only. Running beside the others is safe: each deadline is claimed by one
    conditional UPDATE, so it fires once whoever gets there first (tasks/steps/escalation.py)."""
    ad: Adapters = app.state.adapters
    every = ad.settings.app_dispatch_seconds
    thread = stop = None
    if every > 0:
        from tasks.steps.escalation import start_dispatcher
        thread, stop = start_dispatcher(ad, every, name="app-urgent-dispatch")
        log.info("urgent dispatcher every %s s in the app", every)
    try:
        yield
    finally:
        if thread is not None and stop is not None:
            stop.set()
            thread.join(10)


def create_app(ad: Adapters | None = None) -> FastAPI:
    if ad is None:
        from flows.bootstrap import build
        ad = build()
    # Production (no embedded login, no demo) starts only when `restriction-orders doctor` finds no error.
    refuse_to_start_if_broken(ad.settings, "appen")
    check_session_settings(ad.settings)
    app = FastAPI(
        title="Begränsningsbeställningar", version="0.1.0",
        description="Beställningar av begränsad åtkomst till 1177 journal och e-tjänster. "
                    "Identitet: `X-Remote-User` från betrodd proxy, annars sessionskaka från inloggningssidan.",
        # Swagger UI and ReDoc load scripts from a CDN; the schema itself is at /openapi.json.
        docs_url=None, redoc_url=None, lifespan=_lifespan,
        # Before every route: state-changing requests another site could have made are refused.
        dependencies=[Depends(csrf_guard)],
    )
    app.state.adapters = ad
    _install_handlers(app)

    app.include_router(api.router)
    app.include_router(health.router)
    # The contract's additions from the other parts of the system: the urgent path, paper registration,
    # monitoring and reviews. Each brings its own routes; identity and errors are this app's.
    app.include_router(urgent_routes.router)
    app.include_router(paper_routes.router)
    app.include_router(paper_routes.pages_router)  # /pappersbestallningar, the support centre's paper page
    app.include_router(admin_routes.router)
    app.include_router(queue_api.router)
    app.include_router(admin_api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, limit=MAX_BODY, demo=ad.settings.demo)  # outermost of ours: nothing reads a body before it
    return app


def __getattr__(name: str) -> Any:
    """`forms.app:app` for uvicorn: built on first use, from the environment, not when a test imports this."""
    if name == "app":
        globals()["app"] = built = create_app()
        return built
    raise AttributeError(name)
