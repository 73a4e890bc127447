"""Administrators' search and statistics (issue 14): JSON and pages.

  GET /api/admin/orders?q=&region=&status=&urgent=&overdue=   {"orders": [...], "total": n}; q: a reference
  GET /api/admin/statistics?region=&from=&to=                 {"lead_time", "sla", "volume", "period", ...}
  GET /api/admin/statistics.csv?region=&from=&to=             the same figures as CSV (no personal numbers)
  GET /admin/bestallningar?q=&region=&status=&urgent=&overdue= the search page (the overview's counts link here)
  GET /admin/statistik?region=&from=&to=                      charts (server-rendered SVG) with data tables

Identity, filters, rows and rendering are forms/admin_routes.py's; the search is tasks/steps/order_search.py,
the figures models/statistics.py read by tasks/steps/statistics.py. Nothing here carries a personal number.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from forms.admin_routes import BadFilter, admin_user, order_row, parse_filters, render
from forms.auth import User
from forms.deps import adapters, now
from forms.errors import ApiError
from models import statistics as stats_model
from models.calendar import local
from models.clock import STOCKHOLM
from models.routine import ORDER_TYPES, Stage
from models.schemas import INITIATIVE_LABELS_SV
from models.status import LABELS_SV, OrderStatus
from tasks.adapters import Adapters, audit
from tasks.steps import statistics as stats_step
from tasks.steps.order_search import OrderSearch, search

router = APIRouter(tags=["monitoring"])
REFERENCE_PART = re.compile(r"[A-Z0-9-]{1,20}")
PNR_SHAPE = re.compile(r"(?:\d{6}|\d{8})[-+]?\d{4}")
PAGE_SIZE = 100
DEFAULT_DAYS = 84  # twelve weeks: a quarter's follow-up


def _problem(status: int, code: str, message: str, field: str) -> JSONResponse:
    return JSONResponse({"errors": [{"field": field, "code": code, "message": message}]}, status_code=status)


# --- search ------------------------------------------------------------------------------------------------

def parse_search(ad: Adapters, q: str | None, region: str | None, status: str | None, urgent: bool | None,
                 overdue: bool | None) -> OrderSearch:
    text = (q or "").strip().upper()
    if text and PNR_SHAPE.search(text):
        raise BadFilter("q", "Sök på beställningens referens. Personnummer söks i loggutdraget, där sökningen loggas.")
    if text and not REFERENCE_PART.fullmatch(text):
        raise BadFilter("q", "Ange en referens eller en del av den, till exempel RO-2026-000123 eller 000123.")
    f = parse_filters(ad, region, status)
    return OrderSearch(text or None, f.region, f.status, urgent, overdue)


def _search(ad: Adapters, f: OrderSearch, at: datetime, offset: int) -> tuple[list[dict[str, Any]], int]:
    with ad.db.session() as s:
        rows, total = search(s, f, at, PAGE_SIZE, offset)
        return [order_row(o, at) for o in rows], total


@router.get("/api/admin/orders", summary="Sök beställningar på referens och filter (administratör)")
def api_orders(q: str | None = Query(None, description="Referens eller del av den"),
               region: str | None = Query(None), status: str | None = Query(None),
               urgent: bool | None = Query(None), overdue: bool | None = Query(None),
               offset: int = Query(0, ge=0, le=1_000_000), user: User = Depends(admin_user),
               at: datetime = Depends(now), ad: Adapters = Depends(adapters)) -> Any:
    try:
        f = parse_search(ad, q, region, status, urgent, overdue)
    except BadFilter as exc:
        return _problem(422, "invalid_value", exc.message, exc.field)
    rows, total = _search(ad, f, at, offset)
    return {"orders": rows, "total": total}


def _flag(value: str | None) -> bool | None:
    v = (value or "").strip().lower()
    if v in ("", "alla"):
        return None
    if v in ("true", "1", "ja"):
        return True
    if v in ("false", "0", "nej"):
        return False
    raise BadFilter("urgent", "Ange ja eller nej.")


@router.get("/admin/bestallningar", response_class=HTMLResponse, include_in_schema=False)
def search_page(request: Request, q: str | None = None, region: str | None = None, status: str | None = None,
                urgent: str | None = None, overdue: str | None = None, user: User = Depends(admin_user),
                at: datetime = Depends(now)) -> Response:
    ad = adapters(request)
    try:
        f = parse_search(ad, q, region, status, _flag(urgent), _flag(overdue))
    except BadFilter as exc:
        return render(request, user, "admin_error.html.j2", {"title": "Fel i sökningen", "message": exc.message}, 422)
    rows, total = _search(ad, f, at, 0)
    if f.q and total == 1 and rows[0]["reference"] == f.q:
        return RedirectResponse(f"/bestallningar/{f.q}", status_code=303)  # a whole reference: its page
    return render(request, user, "search.html.j2", {
        "title": "Sök beställningar", "rows": rows, "total": total, "s": f, "f": f, "page_size": PAGE_SIZE})


# --- statistics --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Period:
    region: str | None
    first: date           # inclusive, Swedish calendar days
    last: date            # inclusive

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(), STOCKHOLM)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), time(), STOCKHOLM)

    def query(self) -> str:
        return "&".join(p for p in (f"region={self.region}" if self.region else "", f"from={self.first.isoformat()}",
                                    f"to={self.last.isoformat()}") if p)


def _day(value: str | None, field: str) -> date | None:
    v = (value or "").strip()
    if not v:
        return None
    try:
        return date.fromisoformat(v)
    except ValueError:
        raise BadFilter(field, "Ange datum som ÅÅÅÅ-MM-DD.") from None


def parse_period(ad: Adapters, region: str | None, first: str | None, last: str | None, at: datetime) -> Period:
    f = parse_filters(ad, region, None)
    to = _day(last, "to") or local(at).date()
    start = _day(first, "from") or to - timedelta(days=DEFAULT_DAYS - 1)
    if start > to:
        raise BadFilter("from", "Periodens början ligger efter dess slut.")
    if (to - start).days > 3660:
        raise BadFilter("from", "Perioden får vara högst tio år.")
    return Period(f.region, start, to)


def period_statistics(ad: Adapters, p: Period, at: datetime) -> dict[str, Any]:
    with ad.db.session() as s:
        figures = stats_step.period_statistics(s, at, p.region, p.start, p.end)
    return {"period": {"region": p.region, "from": p.first.isoformat(), "to": p.last.isoformat()},
            "generated_at": local(at).isoformat(), **figures}


def queried_period(region: str | None = Query(None), first: str | None = Query(None, alias="from"),
                   last: str | None = Query(None, alias="to"), at: datetime = Depends(now),
                   ad: Adapters = Depends(adapters)) -> Period:
    """The period a statistics request asks for (422 for one that cannot be)."""
    try:
        return parse_period(ad, region, first, last, at)
    except BadFilter as exc:
        raise ApiError(422, "invalid_value", exc.message, field=exc.field) from None


@router.get("/api/admin/statistics", summary="Ledtider, servicenivå och volymer för en period (administratör)")
async def api_statistics(user: User = Depends(admin_user), p: Period = Depends(queried_period),
                         at: datetime = Depends(now), ad: Adapters = Depends(adapters)) -> Any:
    return await run_in_threadpool(period_statistics, ad, p, at)


def statistics_csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(("section", "measure", "value"))
    period = data["period"]
    w.writerows([("period", "region", period["region"] or "all"), ("period", "from", period["from"]),
                 ("period", "to", period["to"])])
    w.writerows(stats_model.csv_rows(data))
    return out.getvalue()


@router.get("/api/admin/statistics.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}},
            summary="Statistiken som CSV, utan personnummer (administratör)")
async def api_statistics_csv(user: User = Depends(admin_user), p: Period = Depends(queried_period),
                             at: datetime = Depends(now), ad: Adapters = Depends(adapters)) -> Response:
    data = await run_in_threadpool(period_statistics, ad, p, at)
    with ad.db.session() as s:
        audit.record(s, actor=user.hsa_id, action="statistics_exported", at=at,
                     detail={"format": "csv", **data["period"]})
    return Response(statistics_csv(data), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="statistik-{p.first}-{p.last}.csv"', "Cache-Control": "no-store"})


# --- charts ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str        # the value as the table and the bar's label say it
    width: float     # 0..1 of the longest bar
    short: str       # the label in the chart, where space is short (the table has `label`)


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    desc: str
    columns: tuple[str, str]
    bars: tuple[Bar, ...]

    @property
    def height(self) -> int:
        return 24 + 30 * len(self.bars)


def chart(id_: str, title: str, desc: str, columns: tuple[str, str], rows: list[tuple[str, float, str]],
          top: float | None = None) -> Chart:
    """Horizontal bars scaled to the largest value (or to `top`: shares against 100 %)."""
    top = top or max((v for _, v, _ in rows), default=0) or 1
    return Chart(id_, title, desc, columns, tuple(Bar(label, v, text, v / top, SHORT_LABELS.get(label, label))
                                                  for label, v, text in rows))


def _hours(minutes: float | None) -> str:
    if minutes is None:
        return "–"
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h".replace(".", ",")


def _percent(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f} %"


SHORT_LABELS = {ORDER_TYPES["seal_or_lock"].label_sv: "Försegling/låsning",
                ORDER_TYPES["restore_access"].label_sv: "Återställande",
                ORDER_TYPES["block_guardian"].label_sv: "Vårdnadshavare bort",
                ORDER_TYPES["minor_access"].label_sv: "Minderårig 13–15 år"}
SHORT_STAGE = {Stage.CALLBACK.value: "Återuppringning", Stage.HARM_ASSESSMENT.value: "Menprövning",
               Stage.APPROVAL.value: "Godkännande", Stage.EXECUTION.value: "Verkställande"}


def charts(data: dict[str, Any]) -> list[Chart]:
    lt = data["lead_time"]
    stage_rows: list[tuple[str, float, str]] = []
    for st in (*(s.value for s in Stage), "submit_to_completed"):
        s = lt["submit_to_completed"] if st == "submit_to_completed" else lt["stages"][st]
        name = "Inskickad → klar" if st == "submit_to_completed" else SHORT_STAGE[st]
        med, p90 = s["median_minutes"], s["p90_minutes"]
        stage_rows.append((f"{name}, median", med or 0, f"{_hours(med)} (n = {s['n']})"))
        stage_rows.append((f"{name}, 90:e perc.", p90 or 0, _hours(p90)))
    sla = data["sla"]
    day, calls = sla["answered_within_one_working_day"], sla["callbacks_within_window"]
    vol = data["volume"]
    return [
        chart("lead", "Ledtid per steg", "Median och 90:e percentil av tiden i varje steg och från inskickad till "
              "klar, för beställningar inskickade under perioden.", ("Steg", "Ledtid"), stage_rows),
        chart("sla", "Servicenivå", f"Andel besvarade inom en arbetsdag ({day['met']} av {day['n']}) och andel "
              f"återuppringningar inom regionens tid ({calls['met']} av {calls['n']}).", ("Mått", "Andel"),
              [("Besvarade inom en arbetsdag", day["share"] or 0, _percent(day["share"])),
               ("Återuppringda i tid", calls["share"] or 0, _percent(calls["share"]))], top=1),
        chart("week", "Beställningar per vecka", f"Antal inskickade beställningar per vecka, {vol['total']} totalt.",
              ("Vecka", "Antal"), [(w, n, str(n)) for w, n in vol["by_week"].items()]),
        chart("type", "Beställningar per typ och initiativ", "Antal inskickade beställningar per beställningstyp "
              "och per initiativ.", ("Typ eller initiativ", "Antal"),
              [(ORDER_TYPES[t].label_sv if t in ORDER_TYPES else t, n, str(n)) for t, n in vol["by_type"].items()]
              + [(INITIATIVE_LABELS_SV.get(i, i), n, str(n)) for i, n in vol["by_initiative"].items()]),
    ]


@router.get("/admin/statistik", response_class=HTMLResponse, include_in_schema=False)
def statistics_page(request: Request, region: str | None = None, first: str | None = Query(None, alias="from"),
                    last: str | None = Query(None, alias="to"), user: User = Depends(admin_user),
                    at: datetime = Depends(now)) -> Response:
    ad = adapters(request)
    try:
        p = parse_period(ad, region, first, last, at)
    except BadFilter as exc:
        return render(request, user, "admin_error.html.j2", {"title": "Fel i perioden", "message": exc.message}, 422)
    data = period_statistics(ad, p, at)
    return render(request, user, "statistics.html.j2", {
        "title": "Statistik", "data": data, "p": p, "f": p, "charts": charts(data), "csv_query": p.query(),
        "hours": _hours, "percent": _percent, "status_labels": LABELS_SV, "OrderStatus": OrderStatus})
