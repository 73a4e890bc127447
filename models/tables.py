"""SQLAlchemy tables: the orders database is the system of record and the only home of personal data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (which forgets the zone) as on PostgreSQL."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class CareUnit(Base):
    __tablename__ = "care_units"
    hsa_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    region: Mapped[str] = mapped_column(String(40), index=True)
    head_hsa_id: Mapped[str | None] = mapped_column(String(64))


class Staff(Base):
    __tablename__ = "staff"
    hsa_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(40))  # from the region's HSA export (migration 0003r)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    unit_hsa_id: Mapped[str | None] = mapped_column(String(64))
    region: Mapped[str | None] = mapped_column(String(40))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class ReferenceCounter(Base):
    """One row per year; references are RO-YYYY-NNNNNN, gapless enough for people to read out on the phone."""
    __tablename__ = "reference_counters"
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(Integer, default=0)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(String(20), unique=True, index=True)
    order_type: Mapped[str] = mapped_column(String(30))
    initiative: Mapped[str] = mapped_column(String(10))
    actions: Mapped[list[str]] = mapped_column(JSON, default=list)
    patient_pnr: Mapped[str] = mapped_column(String(12), index=True)
    patient_protected: Mapped[bool] = mapped_column(Boolean, default=False)
    guardian_pnr: Mapped[str | None] = mapped_column(String(12))
    # The named guardian has protected identity (skyddade personuppgifter): handled by phone (migration 0003r).
    guardian_protected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The orderer's number for on-call support's callback (staff data, not the patient's; migration 0004).
    callback_phone: Mapped[str | None] = mapped_column(String(40))
    minor_grant: Mapped[bool | None] = mapped_column(Boolean)
    minor_recipient: Mapped[str | None] = mapped_column(String(10))
    child_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    identity_checked: Mapped[bool] = mapped_column(Boolean, default=False)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    care_unit_hsa_id: Mapped[str] = mapped_column(String(64), index=True)
    region: Mapped[str] = mapped_column(String(40), index=True)
    status: Mapped[str] = mapped_column(String(30), index=True)
    channel: Mapped[str] = mapped_column(String(10), default="digital")
    submitted_by: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    due_at: Mapped[datetime | None]
    callback_due_at: Mapped[datetime | None]
    callback_at: Mapped[datetime | None]
    stage_plan: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    review_after_days: Mapped[int | None] = mapped_column(Integer)
    review_due_on: Mapped[datetime | None]
    flow_name: Mapped[str] = mapped_column(String(40))
    flow_run_id: Mapped[str | None] = mapped_column(String(40))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    paper_received_on: Mapped[datetime | None]
    paper_registered_by: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=0)

    decisions: Mapped[list[Decision]] = relationship(back_populates="order", order_by="Decision.id")

    __mapper_args__ = {"version_id_col": version}


class Decision(Base):
    """A human decision on a stage. Proposed by the app, accepted or refused by the flow after its re-check."""
    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    stage: Mapped[str] = mapped_column(String(30))
    decided_by: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(30))      # approve | reject | restrict | do_not_restrict | done
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    text: Mapped[str] = mapped_column(Text, default="")   # rationale/comment: free text stays in this database
    state: Mapped[str] = mapped_column(String(12), default="proposed")  # proposed | accepted | refused
    refusal: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]

    order: Mapped[Order] = relationship(back_populates="decisions")


class AuditEvent(Base):
    """Append-only: UPDATE and DELETE are refused by database triggers (see the migrations), and every row is
    hash-chained to the one before it (`seq`, `prev_hash`, `row_hash`: models/audit_chain.py)."""
    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("seq", name="uq_audit_log_seq"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40), index=True)
    order_reference: Mapped[str | None] = mapped_column(String(20), index=True)
    patient_pnr: Mapped[str | None] = mapped_column(String(12), index=True)
    from_status: Mapped[str | None] = mapped_column(String(30))
    to_status: Mapped[str | None] = mapped_column(String(30))
    channel: Mapped[str] = mapped_column(String(20), default="app")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seq: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The audit chain's head: one row (id 1) naming the last audit row's position and hash. A database trigger
    advances it with every audit insert and refuses an insert that does not extend it; writers lock it first
    (tasks/adapters/audit_chain.py), so concurrent writers make one line, never a fork."""
    __tablename__ = "audit_chain"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))


class AuditVerification(Base):
    """One walk of the audit chain (`restriction-orders audit verify`, the `audit-verify` flow): when, the
    outcome, and the head it saw, which the next walk checks is still there. Append-only like the log."""
    __tablename__ = "audit_verifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    ok: Mapped[bool] = mapped_column(Boolean)
    rows: Mapped[int] = mapped_column(BigInteger)
    head_seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    problems: Mapped[int] = mapped_column(Integer, default=0)
    problem: Mapped[str | None] = mapped_column(String(30))  # the first problem's code
    row_id: Mapped[int | None] = mapped_column(BigInteger)   # the first broken row
    row_seq: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str | None] = mapped_column(String(500))  # the first problem in words: ids and positions only
    by: Mapped[str] = mapped_column(String(64))


class OutboxMessage(Base):
    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(200), unique=True)
    order_reference: Mapped[str | None] = mapped_column(String(20), index=True)
    event: Mapped[str] = mapped_column(String(40))
    recipient: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(300))
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(12), default="pending", index=True)  # pending | sent
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class Deadline(Base):
    """A promise with a time: fired once by an idempotent dispatcher, never by a sleeping process."""
    __tablename__ = "deadlines"
    __table_args__ = (UniqueConstraint("order_reference", "kind", "due_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_reference: Mapped[str] = mapped_column(String(20), index=True)
    kind: Mapped[str] = mapped_column(String(30))  # callback | due | review
    due_at: Mapped[datetime] = mapped_column(index=True)
    met_at: Mapped[datetime | None]
    fired_at: Mapped[datetime | None]


class Deviation(Base):
    """Avvikelse: a promise that was broken (a missed callback, an overdue order)."""
    __tablename__ = "deviations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_reference: Mapped[str] = mapped_column(String(20), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    minutes_late: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime]


# --- The simulated 1177 registry --------------------------------------------------------------------

class RegistryPerson(Base):
    """What this system knows is in force for a person. Each guardian block and minor-access grant is an entry
    `{"target": <guardian's 12 digits or "minor">, "initiative", "region", "order"}`: who set it (DOMAIN §1.3)."""
    __tablename__ = "registry_people"
    pnr: Mapped[str] = mapped_column(String(12), primary_key=True)
    sealed_by_initiative: Mapped[str | None] = mapped_column(String(10))
    sealed_by_region: Mapped[str | None] = mapped_column(String(40))
    sealed_by_order: Mapped[str | None] = mapped_column(String(20))
    locked_by_initiative: Mapped[str | None] = mapped_column(String(10))
    locked_by_region: Mapped[str | None] = mapped_column(String(40))
    locked_by_order: Mapped[str | None] = mapped_column(String(20))
    blocked_guardians: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    minor_access: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)


class AppliedEffect(Base):
    """One row per (order, effect): the registry's guarantee that a retried execution applies nothing twice."""
    __tablename__ = "registry_applied_effects"
    __table_args__ = (UniqueConstraint("order_reference", "effect", "target"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_reference: Mapped[str] = mapped_column(String(20))
    effect: Mapped[str] = mapped_column(String(30))
    target: Mapped[str] = mapped_column(String(12), default="")
    system_reference: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]


# --- Sessions ---------------------------------------------------------------------------------------

class RevokedSession(Base):
    """A signed session cookie that was logged out (forms/auth.py): the cookie itself stays valid until it
    expires (12 h), so logging out writes its id here and the app refuses it from then on. `session_id` is
    a hash of the cookie's random CSRF token (new at every login), never the token itself. Rows past
    `expires_at` are useless (the signature has expired too) and are removed at the next logout."""
    __tablename__ = "revoked_sessions"
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    revoked_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
