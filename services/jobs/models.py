"""The jobs service's tables (schema `jobs`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from innosystem.kit.db import keywords_init, new_id, schema_metadata, utcnow
from innosystem.kit.idempotency import IdempotencyKeyColumns
from innosystem.kit.protos import json_dumps


class Base(DeclarativeBase):
    metadata = schema_metadata("jobs")


Timestamp = TIMESTAMP(timezone=True)


class JobType(Base):
    """A category of jobs with its defaults, owned by one project, or a catalog type (the
    operator's: no project, customer or reseller; priced by `JobTypePrice`s).

    The owner (customer, and its reseller: immutable in tenancy) is copied from tenancy at
    create, so every read is scoped in SQL without asking tenancy again. Enums are stored as
    the proto numbers; the service never stores UNSPECIFIED (it resolves the defaults).
    """

    __tablename__ = "job_types"
    __table_args__ = (
        Index(None, "project_id", "name", unique=True),
        Index(None, "project_id", "create_time", "id"),
        Index(None, "customer_id", "create_time", "id"),
        Index(None, "reseller_id", "create_time", "id"),
        Index(None, "create_time", "id"),
        Index("ix_job_types_catalog_name", "name", unique=True, postgresql_where=text("catalog")),
        CheckConstraint("(catalog AND project_id IS NULL AND customer_id IS NULL) OR "
                        "(NOT catalog AND project_id IS NOT NULL AND customer_id IS NOT NULL)",
                        name="catalog_has_no_owner"),
        CheckConstraint("default_priority BETWEEN 1 AND 4", name="priority_known"),
        CheckConstraint("default_persistence_policy BETWEEN 1 AND 4", name="persistence_known"),
        CheckConstraint("processor_type BETWEEN 1 AND 4", name="processor_known"),
        CheckConstraint("base_cost_cents >= 0 AND max_cost_cents >= 0", name="costs_not_negative"),
        CheckConstraint("timeout_seconds > 0", name="timeout_positive"),
        CheckConstraint("retry_max_attempts >= 1 AND retry_backoff_multiplier >= 1 AND "
                        "retry_initial_interval_seconds >= 0 AND "
                        "retry_max_interval_seconds >= retry_initial_interval_seconds", name="retry_policy_sane"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    catalog: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    default_priority: Mapped[int] = mapped_column(SmallInteger)
    retry_max_attempts: Mapped[int] = mapped_column()
    retry_initial_interval_seconds: Mapped[int] = mapped_column()
    retry_backoff_multiplier: Mapped[float] = mapped_column(Double)
    retry_max_interval_seconds: Mapped[int] = mapped_column()
    non_retryable_error_types: Mapped[list[str]] = mapped_column(ARRAY(String(200)), default=list,
                                                                 server_default=text("'{}'"))
    default_persistence_policy: Mapped[int] = mapped_column(SmallInteger)
    base_cost_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    max_cost_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    currency_code: Mapped[str] = mapped_column(String(3), default="")
    over_capture_policy: Mapped[int] = mapped_column(SmallInteger, default=0)
    charge_on_failure: Mapped[bool] = mapped_column(default=False)
    processor_type: Mapped[int] = mapped_column(SmallInteger)
    external_api: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    max_batch_size: Mapped[int] = mapped_column(default=0)
    enabled: Mapped[bool] = mapped_column(default=True)
    version: Mapped[str] = mapped_column(String(64), default="")
    required_tags: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list, server_default=text("'{}'"))
    timeout_seconds: Mapped[int] = mapped_column()
    sensitive_fields: Mapped[list[str]] = mapped_column(ARRAY(String(200)), default=list,
                                                        server_default=text("'{}'"))
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class JobTypePrice(Base):
    """One price version of a catalog type in one currency (appended, never edited): the one in
    force for a submit is the latest `effective_time` not after it. The job keeps its terms."""

    __tablename__ = "job_type_prices"
    __table_args__ = (
        Index(None, "job_type_id", "currency_code", "effective_time"),
        CheckConstraint("model BETWEEN 1 AND 3", name="model_known"),
        CheckConstraint("unit_price_cents >= 0 AND cap_cents >= 0", name="not_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    job_type_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey(JobType.id, ondelete="CASCADE"))
    currency_code: Mapped[str] = mapped_column(String(3))
    model: Mapped[int] = mapped_column(SmallInteger)
    unit_price_cents: Mapped[int] = mapped_column(BigInteger)
    cap_cents: Mapped[int] = mapped_column(BigInteger)
    effective_time: Mapped[datetime] = mapped_column(Timestamp)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class PriceMarkup(Base):
    """A reseller's markup (or, negative, discount) in basis points on catalog prices for one of its
    customers; no row = 0."""

    __tablename__ = "price_markups"
    __table_args__ = (CheckConstraint("markup_bps BETWEEN -10000 AND 100000", name="markup_in_range"),)

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    markup_bps: Mapped[int] = mapped_column()
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class IdempotencyKey(IdempotencyKeyColumns, Base):
    """The first answer to a create with a `request_id`, per caller scope and method."""

    __tablename__ = "idempotency_keys"


class Job(Base):
    """One job (spec 3.2.5). Owner columns are copied from its type so every read is scoped in SQL.

    `settings` snapshots what the type said at submit (timeout, cost cap, over-capture policy,
    charge on failure, processor, tags): queued jobs keep the settings they were submitted with.
    `queue_name` is the Redis queue the job waits in (type name plus required tags).
    The lease columns fence results: only the current `lease_id` may complete the attempt.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index(None, "project_id", "create_time", "id"),
        Index(None, "customer_id", "create_time", "id"),
        Index(None, "reseller_id", "create_time", "id"),
        Index(None, "create_time", "id"),
        # Partial indexes where a status narrows the rows: a job's every status change is an update
        # that no index can skip (status is indexed), so each index costs an entry per change; these
        # take none once the job has finished.
        Index("ix_jobs_job_type_id_unfinished", "job_type_id", postgresql_where=text("status IN (1, 2, 6)")),
        Index("ix_jobs_lease_expire_time_running", "lease_expire_time", postgresql_where=text("status = 2")),
        Index(None, "project_id", "dead_letter_time", "id", postgresql_where=text("dead_lettered")),
        # The operator's dead letters across tenants, newest first.
        Index("ix_jobs_dead_letter_time_id", "dead_letter_time", "id", postgresql_where=text("dead_lettered")),
        # ListJobs' exact request id search; most jobs of a busy tenant carry one.
        Index("ix_jobs_request_id", "request_id", postgresql_where=text("request_id <> ''")),
        Index(None, "complete_time", postgresql_where=text("complete_time IS NOT NULL")),
        # Recovery between its full passes reads the jobs that started waiting lately (Pending, Scheduled).
        Index(None, "update_time", postgresql_where=text("status IN (1, 6)")),
        # Unfinished jobs' holds by expiry: the renewal loop reads the few about to lapse.
        Index(None, "hold_expire_time", postgresql_where=text("status IN (1, 2, 6)")),
        CheckConstraint("status BETWEEN 1 AND 6", name="status_known"),
        CheckConstraint("priority BETWEEN 1 AND 4", name="priority_known"),
        CheckConstraint("persistence_policy BETWEEN 1 AND 4", name="persistence_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(UUID)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    job_type_id: Mapped[uuid.UUID] = mapped_column(UUID)
    job_type_name: Mapped[str] = mapped_column(String(100))
    queue_name: Mapped[str] = mapped_column(String(400))
    status: Mapped[int] = mapped_column(SmallInteger)
    priority: Mapped[int] = mapped_column(SmallInteger)
    retry_max_attempts: Mapped[int] = mapped_column()
    retry_initial_interval_seconds: Mapped[int] = mapped_column()
    retry_backoff_multiplier: Mapped[float] = mapped_column(Double)
    retry_max_interval_seconds: Mapped[int] = mapped_column()
    non_retryable_error_types: Mapped[list[str]] = mapped_column(ARRAY(String(200)), default=list,
                                                                 server_default=text("'{}'"))
    persistence_policy: Mapped[int] = mapped_column(SmallInteger)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str] = mapped_column(Text, default="")
    error_type: Mapped[str] = mapped_column(String(200), default="")
    runner_id: Mapped[str] = mapped_column(String(200), default="")
    attempt_count: Mapped[int] = mapped_column(default=0)
    next_attempt_time: Mapped[datetime | None] = mapped_column(Timestamp)
    cost_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    estimated_cost_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    currency_code: Mapped[str] = mapped_column(String(3), default="")
    # The billing hold of the current run: the job id, plus a suffix after a manual retry; "" = none.
    hold_id: Mapped[str] = mapped_column(String(100), default="")
    # When billing expires that hold; renewed while the job waits or runs longer (Loops.renew_holds_once).
    hold_expire_time: Mapped[datetime | None] = mapped_column(Timestamp)
    retry_count: Mapped[int] = mapped_column(default=0)  # manual retries (RetryJob)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    schedule_time: Mapped[datetime | None] = mapped_column(Timestamp)
    # When the job last entered its queue (FIFO order in Redis, dispatch latency).
    queue_time: Mapped[datetime | None] = mapped_column(Timestamp)
    start_time: Mapped[datetime | None] = mapped_column(Timestamp)
    complete_time: Mapped[datetime | None] = mapped_column(Timestamp)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)
    request_id: Mapped[str] = mapped_column(String(200), default="")
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    cancel_reason: Mapped[str] = mapped_column(Text, default="")
    cancel_time: Mapped[datetime | None] = mapped_column(Timestamp)
    lease_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    lease_session_id: Mapped[str] = mapped_column(String(200), default="")
    lease_start_time: Mapped[datetime | None] = mapped_column(Timestamp)
    lease_expire_time: Mapped[datetime | None] = mapped_column(Timestamp)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    dead_lettered: Mapped[bool] = mapped_column(default=False)
    dead_letter_time: Mapped[datetime | None] = mapped_column(Timestamp)
    encryption: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    trace_context: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    purged: Mapped[bool] = mapped_column(default=False)  # payload and result removed by retention


class NewJob:
    """A job about to be inserted, as plain attributes named after the table's columns (what the
    submit's Core insert and `job_pb` read): a batch of a thousand costs no ORM instrumentation.
    Made with the columns as keywords; those not given are None."""

    __slots__ = tuple(c.key for c in Job.__table__.columns)
    __init__ = keywords_init(__slots__)

    def values(self, **stored: Jsonb) -> list[Any]:
        """The row's values in the order of `__slots__` (the table's columns), a JSON one as it is
        stored (`Jsonb`); `stored`: a JSON column's value already serialized (a payload measured
        once, the settings a call's jobs of one type share)."""
        values = list(_VALUES(self))
        for name, value in stored.items():
            values[_AT[name]] = value
        for i in _JSON_AT:
            value = values[i]
            if value is not None and not isinstance(value, Jsonb):
                # orjson, not psycopg's json.dumps (a tenth of its CPU): a new job's trace context,
                # its encryption and an encrypted payload hold text and the finite numbers `plain`
                # let through, never a NaN orjson would write as null
                values[i] = Jsonb(value, dumps=json_dumps)
        return values

    if TYPE_CHECKING:  # the columns, as Job declares them
        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...


_VALUES = attrgetter(*NewJob.__slots__)
_AT = {key: i for i, key in enumerate(NewJob.__slots__)}
_JSON_AT = tuple(i for i, c in enumerate(Job.__table__.columns) if isinstance(c.type, JSON))


class JobAttempt(Base):
    """One attempt (a lease) of a job."""

    __tablename__ = "job_attempts"
    # Room on each page for the attempt's one update, at its end: HOT, no new index entry (0009).
    __table_args__ = {"postgresql_with": {"fillfactor": 70}}

    job_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    attempt: Mapped[int] = mapped_column(primary_key=True)
    lease_id: Mapped[uuid.UUID] = mapped_column(UUID)
    runner_id: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[int] = mapped_column(SmallInteger)
    start_time: Mapped[datetime] = mapped_column(Timestamp)
    end_time: Mapped[datetime | None] = mapped_column(Timestamp)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    actual_cost_cents: Mapped[int | None] = mapped_column(BigInteger)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class JobBatch(Base):
    """One BatchCancelJobs or BatchRetryJobs that changed jobs: its filter and counts, the answer a
    repeat of its `request_id` gets."""

    __tablename__ = "job_batches"
    __table_args__ = (Index(None, "project_id", "create_time"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(UUID)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    action: Mapped[str] = mapped_column(String(20))  # cancel | retry
    filter: Mapped[dict[str, Any]] = mapped_column(JSONB)
    matched_count: Mapped[int] = mapped_column(BigInteger)
    changed_count: Mapped[int] = mapped_column(BigInteger)
    skipped_count: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class JobStatusChange(Base):
    """One status change of a job, with its reason."""

    __tablename__ = "job_status_changes"
    __table_args__ = (Index(None, "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID)
    status: Mapped[int] = mapped_column(SmallInteger)
    time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")
    attempt: Mapped[int] = mapped_column(default=0)


class BillingOutbox(Base):
    """The billing work of an attempt's end (capture `amount_cents`, or release when it is null),
    written in the ending's transaction and deleted once billing answered: a hold is settled only
    for an ending that committed, and one that a crash or a billing outage left behind is settled
    by the outbox sweeper."""

    __tablename__ = "billing_outbox"
    __table_args__ = (Index(None, "create_time"),)

    hold_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID)
    amount_cents: Mapped[int | None] = mapped_column(BigInteger)
    held_cents: Mapped[int] = mapped_column(BigInteger)
    over_capture_policy: Mapped[int] = mapped_column(SmallInteger)
    description: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(Timestamp)
    # Billing refused it (not merely unreachable): tried again from `next_try_time`, backing off.
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    next_try_time: Mapped[datetime | None] = mapped_column(Timestamp)
    last_error: Mapped[str] = mapped_column(Text, default="", server_default=text("''"))


class Webhook(Base):
    """A project's endpoint for job events (webhooks.py). The signing secret is sealed under the
    platform master key (it must be usable to sign, so it cannot be a hash)."""

    __tablename__ = "webhooks"
    __table_args__ = (
        Index(None, "project_id", "create_time", "id"),
        Index(None, "customer_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(UUID)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(ARRAY(String(40)))
    description: Mapped[str] = mapped_column(String(200), default="")
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    secret_fingerprint: Mapped[str] = mapped_column(String(8))
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint: written by the fan-out from `job_status_changes` (change_id =
    the change's id) or billing's wallet events (change_id = billing's seq, event_type
    wallet.low_balance), sent by the delivery loop. Unique per (endpoint, change, event), so a
    rescan writes nothing twice."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(None, "webhook_id", "change_id", "event_type", unique=True),
        Index(None, "webhook_id", "create_time", "id"),
        # The delivery loop claims per endpoint, each endpoint's due ones in order.
        Index(None, "webhook_id", "next_attempt_time", postgresql_where=text("state = 1")),
        CheckConstraint("state BETWEEN 1 AND 3", name="state_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    webhook_id: Mapped[uuid.UUID] = mapped_column(UUID)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    change_id: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID)  # None for wallet.low_balance
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[int] = mapped_column(SmallInteger, default=1)
    attempts: Mapped[int] = mapped_column(default=0)
    last_status_code: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    next_attempt_time: Mapped[datetime] = mapped_column(Timestamp)
    last_attempt_time: Mapped[datetime | None] = mapped_column(Timestamp)
    # Retries stop here: 24 h after the event, or after a redelivery request.
    expire_time: Mapped[datetime] = mapped_column(Timestamp)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class WebhookCursor(Base):
    """How far the fan-out has read (one row per source: `deliveries` for `job_status_changes`,
    `wallet` for billing's wallet events): everything at or below it has become deliveries."""

    __tablename__ = "webhook_cursor"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    change_id: Mapped[int] = mapped_column(BigInteger)
