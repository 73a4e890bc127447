"""`restriction-orders`: the command-line tool for on-call support and operations (installed with the project).

    restriction-orders urgent RO-2026-000123 [--by DEMO-KALMAR-ONCALL]
        make an existing order urgent (given by reference on the phone, or registered from paper), page
        on-call at once and make sure the order's run is going
    restriction-orders callback RO-2026-000123 --by DEMO-KALMAR-ONCALL [--note "Uppringd 17.12"]
        record the callback: stops the callback clock and lets the order continue
    restriction-orders clock RO-2026-000123
        the callback clock: deadline, seconds left, met or missed
    restriction-orders escalate [--reference RO-2026-000123 ...]
        run the urgent dispatcher once: send pages that never went out, escalate missed callbacks
    restriction-orders automations [--print]
        create or update every Prefect automation the project ships, the urgent/run ones and the
        monitoring ones (or print them all for `prefect automation create`)
    restriction-orders deploy [--prefect-file prefect.yaml] [--no-automations]
        production's Prefect objects at PREFECT_API_URL, created or updated (run it again after every
        release; nothing is duplicated): the work pool of prefect.yaml's type, its queues with their
        priorities (urgent first), every deployment of prefect.yaml, and the shipped automations
        (tasks/adapters/deploy.py); prints what it did and the command that starts a worker
    restriction-orders doctor
        check this production environment before it starts (models/doctor.py): app URL, sender, session
        secret, proxy trust, Prefect reachable and locked, database reachable and migrated, region values;
        exit 1 listing every error (warnings are listed too). The app and the warm workers run the same
        checks at start in production and refuse to start on an error
    restriction-orders directory import --staff STAFF.csv [--units UNITS.csv] [--dry-run] [--by HSA-ID]
        load the region's staff and care units from its HSA catalogue export (README: "Staff directory");
        every row is checked first, nothing is written unless both files are valid, people of the file's
        regions who are not in it are deactivated (never deleted), every change is audited
    restriction-orders audit verify [--database-url URL] [--no-record]
        walk the audit log's hash chain (tasks/adapters/audit_chain.py); exit 1 naming the first broken row (id,
        position, what is wrong), 3 when the database cannot be read. The outcome is stored in the database
        (the admin overview and /healthz show it) unless --no-record
    restriction-orders app-role NAME [--database-url OWNER_URL] [--password-env VAR]
        PostgreSQL, run as the schema's owner after every migration: create or update the role the app and
        the workers connect as: SELECT and INSERT only on the audit log (tasks/adapters/db_roles.py)

Uses the same settings as the app (DATABASE_URL / RO_*, PREFECT_API_URL, PREFECT_API_AUTH_STRING; on the
embedded default the auth string is read from RO_DATA_DIR/prefect-api-auth when not set). Prints references and
times only, never a patient's personal data (`directory import` prints the staff rows it changes). Exit status:
0 done, 1 refused (unknown order, wrong status, not allowed, an invalid directory file; for `audit verify`: the
chain is broken), 2 usage, 3 the database could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from models.calendar import local

if TYPE_CHECKING:
    from tasks.adapters import Adapters


def _when(at: datetime | None) -> str:
    return local(at).strftime("%Y-%m-%d %H:%M:%S %Z") if at else "-"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="restriction-orders", description="Begränsningsbeställningar: beredskap och drift.")
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("urgent", help="gör en beställning brådskande och sök beredskapen")
    u.add_argument("reference")
    u.add_argument("--by", default="", help="ditt HSA-id (beredskap eller support); kontrolleras mot personalkatalogen")
    c = sub.add_parser("callback", help="registrera återuppringning (stoppar klockan)")
    c.add_argument("reference")
    c.add_argument("--by", required=True, help="ditt HSA-id (beredskap eller support)")
    c.add_argument("--note", default="", help="anteckning (stannar i beställningsdatabasen)")
    k = sub.add_parser("clock", help="visa återuppringningsklockan")
    k.add_argument("reference")
    e = sub.add_parser("escalate", help="kör eskaleringen en gång")
    e.add_argument("--reference", action="append", default=[],
                   help="bara denna beställning (kan upprepas); utan: alla, och missade sökningar skickas")
    a = sub.add_parser("automations", help="skapa/uppdatera Prefect-automationerna")
    a.add_argument("--print", action="store_true", dest="print_only", help="skriv ut dem som JSON i stället")
    dp = sub.add_parser("deploy", help="skapa/uppdatera arbetspoolen, köerna, driftsättningarna och automationerna")
    dp.add_argument("--prefect-file", type=Path, default=None, help="standard: projektets prefect.yaml")
    dp.add_argument("--project-dir", type=Path, default=None, help="där flödenas kod finns (standard: filens katalog)")
    dp.add_argument("--no-automations", action="store_true", help="bara pool, köer och driftsättningar")
    sub.add_parser("doctor", help="kontrollera produktionsmiljön; avslutas med 1 och en lista över felen")
    d = sub.add_parser("directory", help="personalkatalogen")
    dsub = d.add_subparsers(dest="directory_command", required=True)
    i = dsub.add_parser("import", help="läs in personal och vårdenheter från regionens HSA-export (CSV)")
    i.add_argument("--staff", required=True, type=Path,
                   help="personal: hsa_id,name,email,phone,roles,care_unit_hsa_id,region,active (roller med ;)")
    i.add_argument("--units", type=Path, help="vårdenheter: hsa_id,name,region,head_hsa_id")
    i.add_argument("--dry-run", action="store_true", help="visa vad som skulle ändras, skriv ingenting")
    i.add_argument("--by", default="", help="ditt HSA-id, för granskningsloggen")
    g = sub.add_parser("audit", help="granskningsloggen")
    gsub = g.add_subparsers(dest="audit_command", required=True)
    v = gsub.add_parser("verify", help="verifiera hashkedjan; avslutas med 1 och första brutna raden")
    v.add_argument("--database-url", default=None, help="en annan databas än DATABASE_URL")
    v.add_argument("--no-record", action="store_true", help="spara inte utfallet (t.ex. med en läsroll)")
    r = sub.add_parser("app-role", help="PostgreSQL: rollen som appen och arbetarna ansluter som")
    r.add_argument("role")
    r.add_argument("--database-url", default=None, help="ägarens anslutning (standard: DATABASE_URL)")
    r.add_argument("--password-env", default="", help="miljövariabel med rollens lösenord")
    return p


def _urgent(ad: Adapters, reference: str, by: str) -> int:
    from flows.urgent import start_urgent
    out = asyncio.run(start_urgent(ad, reference, by.strip().upper() or "cli", check_actor=bool(by.strip())))
    print(f"{out.reference}: {'gjord brådskande' if out.made_urgent else 'redan brådskande'}, status {out.status}")
    print(f"  återuppringning senast: {_when(out.callback_due_at)}")
    if out.paged:
        target = "beredskapen" if out.paged == "on_call" else "supportkön (kontorstid)"
        print(f"  sökt: {target}, {'levererat' if out.page_delivered else 'i utkorgen (skickas om)'}")
    else:
        print("  inget att söka (återuppringning redan gjord)")
    print(f"  körning: {out.flow_run_id or 'startas av husstädningen när Prefect svarar'}")
    return 0


def _callback(ad: Adapters, reference: str, by: str, note: str) -> int:
    from flows.urgent import record_callback
    out = asyncio.run(record_callback(ad, reference, by.strip().upper(), note))
    print(f"{out.reference}: återuppringning registrerad {_when(out.recorded_at)} "
          f"({'i tid' if out.on_time else 'SENT'}), status {out.status}")
    return 0


def _clock(ad: Adapters, reference: str) -> int:
    from tasks.steps.urgency import callback_clock
    c = callback_clock(ad, reference, ad.now())
    print(f"{c.reference}: {c.state}")
    if c.state != "none":
        print(f"  senast: {_when(c.callback_due_at)}  kvar: {c.seconds_left} s")
        print(f"  registrerad: {_when(c.recorded_at)}  eskalerad: {_when(c.escalated_at)}"
              + (f" ({c.minutes_late} min sen)" if c.minutes_late is not None else ""))
    return 0


def _escalate(ad: Adapters, references: list[str]) -> int:
    from tasks.steps.escalation import dispatch, escalate_due
    now = ad.now()
    if references:
        counts = {"paged": 0, "escalated": len(escalate_due(ad, now, references=references))}
    else:
        counts = dispatch(ad, now)
    print(f"sökta: {counts['paged']}, eskalerade: {counts['escalated']}")
    _flush_events()
    return 0


def _flush_events() -> None:
    try:
        from prefect.events.worker import EventsWorker
        EventsWorker.drain_all(timeout=10)
    except Exception:  # the event is a notice; the deviation and the email are already stored
        pass


def _automations(ad: Adapters, print_only: bool) -> int:
    from tasks.adapters.automations import ensure_all, specs_json
    if print_only:
        print(specs_json())
        return 0
    for name, automation_id in ensure_all(ad.settings.automation_notify_block or None).items():
        print(f"{name}: {automation_id}")
    return 0


def _deploy(ad: Adapters, prefect_file: Path | None, project_dir: Path | None, automations: bool) -> int:
    from tasks.adapters.deploy import PREFECT_FILE, DeployError, deploy, read_plan
    try:
        plan = read_plan(prefect_file or PREFECT_FILE, project_dir)
        report = deploy(plan, ad.settings.automation_notify_block or None, automations=automations)
    except DeployError as exc:
        print(f"Fel: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # unreachable, refused (401), or a server error: the operator must see it
        print(f"Prefect ({_prefect_url()}) svarar inte som väntat: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    print(f"arbetspool {plan.pool.name} ({plan.pool.type}): {report.pool}")
    for name, what in report.queues.items():
        print(f"  kö {name} (prioritet {plan.pool.queues[name]}): {what}")
    for name, deployment_id in report.deployments.items():
        print(f"driftsättning {name}: {deployment_id}")
    for name, automation_id in report.automations.items():
        print(f"automation {name}: {automation_id}")
    if plan.worker_command:
        print(f"Starta arbetarna (på varje arbetsmaskin, samma miljö): {plan.worker_command}")
    return 0


def _doctor(ad: Adapters) -> int:
    from models.doctor import errors
    from tasks.adapters.doctor import run
    problems = run(ad.settings)
    for p in problems:
        print(p.line())
    errs = errors(problems)
    print(f"{len(errs)} fel, {len(problems) - len(errs)} varningar." if problems else "Inga problem hittades.")
    return 1 if errs else 0


def _prefect_url() -> str:
    from prefect.settings import get_current_settings
    return str(get_current_settings().api.url or "PREFECT_API_URL saknas")


def _directory_import(ad: Adapters, staff: Path, units: Path | None, dry_run: bool, by: str) -> int:
    from tasks.steps.directory_import import ACTOR, import_directory
    result = import_directory(ad, staff, units, dry_run=dry_run, actor=by.strip().upper() or ACTOR)
    if result.problems:
        print(f"Inget har skrivits: {len(result.problems)} fel.", file=sys.stderr)
        for p in result.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    for c in result.changes:
        print(c.describe())
    counts = {k: sum(c.kind == k for c in result.changes) for k in ("add", "update", "deactivate")}
    summary = (f"nya: {counts['add']}, ändrade: {counts['update']}, avaktiverade: {counts['deactivate']}, "
               f"oförändrade: {result.unchanged}")
    if dry_run:
        print(f"Provkörning, inget skrevs ({summary}).")
    else:
        print(f"Inläst ({summary}); varje ändring finns i granskningsloggen." if result.applied
              else f"Inget att ändra ({summary}).")
    return 0


def _db_url(url: str | None) -> str | None:
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if url else None


def _audit_verify(ad: Adapters, url: str | None, record: bool) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from tasks.adapters import audit_chain
    from tasks.adapters.database import Database
    try:
        db = Database(_db_url(url) or "") if url else ad.db
        report = audit_chain.verify(db, by="cli", record=False)
    except SQLAlchemyError as exc:  # a URL it cannot use, too
        print(f"Kunde inte läsa granskningsloggen: {type(exc).__name__}", file=sys.stderr)
        return 3
    if report.ok:
        print(f"Granskningsloggens kedja är hel: {report.rows} rader verifierade "
              f"(position 1–{report.last_seq}, huvud {report.last_hash[:16]}…).")
    else:
        assert report.first is not None
        print(f"Granskningsloggens kedja är BRUTEN. Första brutna rad: {report.first.line()}")
        print(f"{report.problem_count} fel; {report.rows} rader i kedjan genomgångna.")
        for problem in report.problems[1:10]:
            print(f"  {problem.line()}")
    for warning in report.warnings[:10]:
        print(f"  varning: {warning.line()}")
    if record:
        try:
            audit_chain.save(db, report, by="cli")
        except SQLAlchemyError as exc:
            print(f"Utfallet kunde inte sparas: {type(exc).__name__}", file=sys.stderr)
    if db is not ad.db:
        db.dispose()
    return 0 if report.ok else 1


def _app_role(ad: Adapters, role: str, url: str | None, password_env: str) -> int:
    import os

    from tasks.adapters.db_roles import grant_app_role
    password = os.environ.get(password_env) if password_env else None
    if password_env and not password:
        print(f"Fel: {password_env} är inte satt.", file=sys.stderr)
        return 2
    for table, granted in grant_app_role(_db_url(url) or ad.db.url, role, password).items():
        print(f"{table}: {granted}")
    return 0


def main(argv: Sequence[str] | None = None, ad: Adapters | None = None) -> int:
    """The command line; `ad` are the adapters to use (tests), else the composition root builds them."""
    args = _parser().parse_args(argv)
    from tasks.adapters.prefect_auth import use_embedded_secret
    from tasks.adapters.settings import Settings
    if ad is None:
        # On the embedded default the Prefect API is locked: its secret, before Prefect loads.
        use_embedded_secret(Settings().data_dir)
    from flows.bootstrap import build
    from tasks.adapters.db_roles import RoleError
    from tasks.steps.orders import Conflict, Forbidden, NotFound
    ad = ad or build()
    try:
        if args.command == "urgent":
            return _urgent(ad, args.reference, args.by)
        if args.command == "callback":
            return _callback(ad, args.reference, args.by, args.note)
        if args.command == "clock":
            return _clock(ad, args.reference)
        if args.command == "escalate":
            return _escalate(ad, args.reference)
        if args.command == "deploy":
            return _deploy(ad, args.prefect_file, args.project_dir, not args.no_automations)
        if args.command == "doctor":
            return _doctor(ad)
        if args.command == "directory":
            return _directory_import(ad, args.staff, args.units, args.dry_run, args.by)
        if args.command == "audit":
            return _audit_verify(ad, args.database_url, not args.no_record)
        if args.command == "app-role":
            return _app_role(ad, args.role, args.database_url, args.password_env)
        return _automations(ad, args.print_only)
    except NotFound:
        print("Beställningen finns inte.", file=sys.stderr)
    except Conflict as exc:
        print(f"Går inte nu: {exc}", file=sys.stderr)
    except Forbidden as exc:
        print(f"Nekas: {exc.refusal.message}", file=sys.stderr)
    except (ValueError, RoleError) as exc:
        print(f"Fel: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
