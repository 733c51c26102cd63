"""Database tables (SQLAlchemy 2). Alembic migrations in `shared/migrations` mirror these."""

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands back naive ones; every stored time is UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def new_id(prefix: str) -> str:
    """A random, sortable-enough public id such as `ftjob-3f2a...`."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class Base(DeclarativeBase):
    """Declarative base with stable constraint names for migrations."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class JobStatus(enum.StrEnum):
    """Where a job is in its life; the last three are terminal."""

    validating = "validating"
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the job can change no more."""
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class User(Base):
    """A person (or a team's script) sharing the box: owns jobs, files, keys and secrets."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("user"))
    name: Mapped[str] = mapped_column(String(128), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    # Higher runs sooner among users with equal share; only an admin changes it.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Caps set by an admin, by name (see `shared.limits.LIMITS`); a missing cap is no cap.
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A bearer key of one user; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    user: Mapped[User] = relationship(lazy="joined")


class UserSecret(Base):
    """One of a user's tokens (HF, W&B), encrypted with the server's key; never returned by the API."""

    __tablename__ = "user_secrets"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One fine-tune job; the row is the source of truth for its state."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_owner_id_status", "owner_id", "status"),
        Index("ix_jobs_owner_id_created_at_id", "owner_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ftjob"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, validate_strings=True), default=JobStatus.queued
    )
    # Higher runs sooner within a user's fair share; starts at the owner's priority, an admin may change it.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    spec: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    error_param: Mapped[str | None] = mapped_column(String(128), default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)  # the worker that launched the attempt
    # A multi-GPU attempt also holds these workers' GPUs (on the launcher's box); they start nothing meanwhile.
    helpers: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    gpus: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # spec.resources, for the scheduler
    time_limit_s: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    drain_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    preemptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    oom_retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    wandb_run_id: Mapped[str | None] = mapped_column(String(128), default=None)
    wandb_url: Mapped[str | None] = mapped_column(String(1024), default=None)
    wandb_dir: Mapped[str | None] = mapped_column(String(1024), default=None)
    owner: Mapped[User] = relationship(lazy="joined")


class EventType(enum.StrEnum):
    """What an event is about."""

    status = "status"
    progress = "progress"
    checkpoint = "checkpoint"
    wandb = "wandb"
    hub = "hub"
    log = "log"
    warning = "warning"
    error = "error"


class JobEvent(Base):
    """One line of a job's history; ids grow, so `after=<id>` pages and resumes streams."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[EventType] = mapped_column(Enum(EventType, native_enum=False, length=16, validate_strings=True))
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Checkpoint(Base):
    """A checkpoint saved completely on disk (and maybe pushed to the Hub)."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    path: Mapped[str] = mapped_column(String(1024))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hub_commit_url: Mapped[str | None] = mapped_column(String(1024), default=None)


class UploadedFile(Base):
    """A dataset file uploaded through the API; a spec names it by id as `dataset.id`."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("file"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int | None] = mapped_column(BigInteger, default=None)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """A client's `Idempotency-Key` for `POST /jobs`: the request it stood for and the job it created."""

    __tablename__ = "idempotency_keys"

    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A worker process as it last reported itself; its current job is the live job that names it (`Job.worker` or
    `Job.helpers`)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery's node name, e.g. gpu0@host
    kind: Mapped[str] = mapped_column(String(16))  # "gpu" or "validate"
    hostname: Mapped[str] = mapped_column(String(255))
    gpu: Mapped[str | None] = mapped_column(String(64), default=None)  # its CUDA_VISIBLE_DEVICES
    gpu_name: Mapped[str | None] = mapped_column(String(255), default=None)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)
