"""Job operations of the API and the validation worker. They flush but never commit: the caller owns the
transaction. Every change of status appends a `status` event in the same transaction. What a running
attempt writes (fenced by its attempt number) is in `shared.attempts`.
"""

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, select, tuple_, update
from sqlalchemy.orm import Session

from shared.errors import FtqError, InvalidInput, JobNotFound
from shared.events import add_event, add_status_event
from shared.models import Checkpoint, EventType, Job, JobStatus, User, utcnow
from shared.spec import JobSpec


class InvalidTransition(FtqError):
    """The job's status does not allow this action."""

    status_code = 409
    code = "invalid_state"


def create_job(*, session: Session, spec: JobSpec, owner: User) -> Job:
    """Store a new job of `owner` in `validating` with its resolved spec, at the owner's priority."""
    job = Job(
        owner=owner,
        priority=owner.priority,
        status=JobStatus.validating,
        spec=spec.model_dump(mode="json"),
        metadata_=dict(spec.metadata),
        gpus=spec.resources.gpus,
        time_limit_s=spec.resources.time_limit_minutes * 60 if spec.resources.time_limit_minutes else None,
    )
    session.add(job)
    session.flush()
    add_status_event(session, job.id, JobStatus.validating, "validating the dataset")
    return job


def check_adapter_job(*, session: Session, spec: JobSpec, owner_id: str | None) -> Job:
    """The succeeded fine-tune whose adapter an evaluation job names, trained on the job's base model (422 else)."""
    job = session.get(Job, spec.adapter)
    if job is None or (owner_id is not None and job.owner_id != owner_id):
        raise InvalidInput(f"no job {spec.adapter!r}", code="adapter_not_found", param="adapter")
    if job.spec.get("kind") == "evaluation":
        raise InvalidInput(
            f"job {job.id} is an evaluation: it has no adapter", code="adapter_not_found", param="adapter"
        )
    if job.status is not JobStatus.succeeded or not (job.result or {}).get("adapter_path"):
        raise InvalidInput(
            f"job {job.id} is {job.status.value}: only a succeeded fine-tune has an adapter to score",
            code="adapter_not_ready",
            param="adapter",
        )
    trained_on = job.spec.get("base_model")
    if trained_on != spec.base_model:
        raise InvalidInput(
            f"the adapter of {job.id} was trained on {trained_on!r}, not {spec.base_model!r}",
            code="base_model_mismatch",
            param="base_model",
        )
    return job


def adapter_job_path(*, session: Session, job_id: str) -> str:
    """Where the adapter of a succeeded fine-tune was saved."""
    job = session.get(Job, job_id)
    path = (job.result or {}).get("adapter_path") if job is not None else None
    if not path:
        raise InvalidInput(f"job {job_id} has no saved adapter", code="adapter_not_found", param="adapter")
    return str(path)


def _from_validating(session: Session, job_id: str, **values: Any) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.validating)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def pass_validation(
    *,
    session: Session,
    job_id: str,
    stats: dict[str, Any],
    planned_steps: int,
    warnings: list[str],
    unit: str = "steps",
) -> bool:
    """Queue a validated job, keeping its dataset statistics and planned step count (an evaluation job plans
    `answers`)."""
    progress = {"step": 0, "total_steps": planned_steps, "trained_tokens": 0}
    if not _from_validating(session, job_id, status=JobStatus.queued, stats=stats, progress=progress):
        return False
    for warning in warnings:
        add_event(session=session, job_id=job_id, type=EventType.warning, level="warning", message=warning)
    add_status_event(session, job_id, JobStatus.queued, f"queued ({planned_steps} {unit} planned)", stats=stats)
    return True


def failure_values(error: FtqError) -> dict[str, Any]:
    """The column values of a job that ends `failed` with this error."""
    return {
        "status": JobStatus.failed,
        "error_code": error.code,
        "error_message": error.message[:4000],
        "error_param": error.param,
        "finished_at": utcnow(),
    }


def fail_validation(*, session: Session, job_id: str, error: FtqError) -> bool:
    """Fail a job whose spec or data did not pass validation."""
    if not _from_validating(session, job_id, **failure_values(error)):
        return False
    add_status_event(session, job_id, JobStatus.failed, f"failed: {error.code}", error=error.as_dict())
    return True


def get_job(*, session: Session, job_id: str, owner_id: str | None = None) -> Job:
    """The job with this id (of this owner, when one is given), or JobNotFound: another's job does not exist."""
    job = session.get(Job, job_id)
    if job is None or (owner_id is not None and job.owner_id != owner_id):
        raise JobNotFound(f"no job {job_id!r}", param="job_id")
    return job


# What a job is shown with (`api.schemas.JobRead`): its columns under their attribute names and its owner's name, read
# as plain rows by one Core statement. The reads that scripts poll build no ORM objects (loading one cost a poll more
# than its query). A page is read as ids first: the API shows the jobs it keeps (`api.viewcache`) as kept, and reads
# the rest by id, without the specs, which it keeps as it validated them (`api.speccache`): a spec never changes once
# stored, and a page's specs were half of its decoding and validating.
SHOWN_COLUMNS = (
    "id", "owner_id", "status", "priority", "metadata_", "progress", "stats", "result", "error_code",
    "error_message", "error_param", "attempt", "worker", "preemptions", "created_at", "started_at", "finished_at",
    "wandb_url", "wandb_dir",
)  # fmt: skip
_SHOWN = (*(getattr(Job, name).label(name) for name in SHOWN_COLUMNS), User.name.label("owner_name"))
JOB_VIEWS = select(*_SHOWN).join(User, User.id == Job.owner_id)
JOB_VIEW_BY_ID = JOB_VIEWS.add_columns(Job.spec).where(Job.id == bindparam("job_id"))
JOB_VIEWS_BY_ID = JOB_VIEWS.where(Job.id.in_(bindparam("job_ids", expanding=True)))
SPECS_BY_ID = select(Job.id, Job.spec).where(Job.id.in_(bindparam("job_ids", expanding=True)))
JobView = Row[*tuple[Any, ...]]  # a row of JOB_VIEWS: attributes named as in SHOWN_COLUMNS, and owner_name


def get_job_view(*, connection: Connection, job_id: str) -> JobView:
    """The job with this id as it is shown, with its stored `spec` and its `owner_id` (whoever asks: the caller
    checks they may see it), or JobNotFound."""
    view = connection.execute(JOB_VIEW_BY_ID, {"job_id": job_id}).one_or_none()
    if view is None:
        raise JobNotFound(f"no job {job_id!r}", param="job_id")
    return view


def list_job_ids(
    *,
    connection: Connection,
    limit: int,
    after: str | None = None,
    status: JobStatus | None = None,
    owner_id: str | None = None,
) -> tuple[list[Row[str, JobStatus]], bool]:
    """A page of jobs newest first (of one owner, when given) as (id, status) rows: `limit` of them after the cursor
    job, and whether more follow. What each is shown as: `job_views` (and `job_specs`)."""
    query = select(Job.id, Job.status).order_by(Job.created_at.desc(), Job.id.desc())
    if owner_id is not None:
        query = query.where(Job.owner_id == owner_id)
    if status is not None:
        query = query.where(Job.status == status)
    if after is not None:
        cursor = connection.execute(select(Job.created_at, Job.id).where(Job.id == after)).one_or_none()
        if cursor is None:
            raise InvalidInput(f"no job {after!r} to page after", code="invalid_cursor", param="after")
        # A row-value comparison: PostgreSQL (and SQLite) turn it into one index range, where an OR of the two
        # cases made PostgreSQL walk every newer row.
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(cursor.created_at, cursor.id))
    rows = list(connection.execute(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def job_views(*, connection: Connection, job_ids: list[str]) -> list[JobView]:
    """These jobs as they are shown, without their specs (one query, in no particular order; none for no ids)."""
    if not job_ids:
        return []
    return list(connection.execute(JOB_VIEWS_BY_ID, {"job_ids": job_ids}))


def job_specs(*, connection: Connection, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The stored specs of these jobs, by id (one query; none for no ids)."""
    if not job_ids:
        return {}
    return {row.id: row.spec for row in connection.execute(SPECS_BY_ID, {"job_ids": job_ids})}


def cancel_job(*, session: Session, job: Job) -> Job:
    """Cancel a job: one not yet running at once, a running one at its next step (`cancelling`).

    The change is conditional on the status read, so a job that ends meanwhile is not overwritten (409).
    """
    seen = job.status
    if seen.is_terminal:
        raise InvalidTransition(f"job is already {seen.value}", param="job_id")
    if seen is JobStatus.cancelling:
        return job
    now = utcnow()
    if seen is JobStatus.running:
        values: dict[str, Any] = {"status": JobStatus.cancelling, "cancel_requested_at": now}
    else:
        values = {"status": JobStatus.cancelled, "cancel_requested_at": now, "finished_at": now}
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == seen)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidTransition("the job changed status while it was being cancelled; read it again", param="job_id")
    new = values["status"]
    message = (
        "cancel requested; stopping at the next step" if new is JobStatus.cancelling else "cancelled before it started"
    )
    add_status_event(session, job.id, new, message)
    session.refresh(job)
    return job


def set_job_priority(*, session: Session, job: Job, priority: int) -> Job:
    """Change a job's priority (an admin's call); it orders the job among its owner's and equal shares."""
    job.priority = priority
    session.flush()
    add_event(session=session, job_id=job.id, type=EventType.log, message=f"priority set to {priority}")
    return job


def fail_job_unqueued(*, session: Session, job_id: str, message: str) -> None:
    """Fail a job whose message never reached the broker, so it does not wait forever."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_((JobStatus.validating, JobStatus.queued)))
        .values(status=JobStatus.failed, error_code="queue_unavailable", error_message=message, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        add_status_event(session, job_id, JobStatus.failed, "failed: queue_unavailable")


def list_checkpoints(*, session: Session, job_id: str) -> list[Checkpoint]:
    """A job's checkpoints by step."""
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))


def stale_validations(*, session: Session, older_than_s: float) -> list[str]:
    """Jobs still `validating` whose message was sent (or should have been) longer ago than `older_than_s`."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    last_sent = func.coalesce(Job.dispatched_at, Job.created_at)
    query = select(Job.id).where(Job.status == JobStatus.validating, last_sent < cutoff).order_by(Job.created_at)
    return list(session.scalars(query))


def oldest_queued(*, session: Session, limit: int) -> list[str]:
    """The ids of up to `limit` queued jobs, oldest first."""
    query = select(Job.id).where(Job.status == JobStatus.queued).order_by(Job.created_at, Job.id).limit(limit)
    return list(session.scalars(query))


def count_queued(*, session: Session) -> int:
    """How many jobs wait for a GPU worker."""
    return int(session.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.queued)) or 0)


def mark_dispatched(*, session: Session, job_ids: list[str]) -> None:
    """Remember when these jobs' messages were (re)sent."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids))
            .values(dispatched_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def get_checkpoint(*, session: Session, job_id: str, step: int) -> Checkpoint:
    """A job's checkpoint at `step`, or 404."""
    checkpoint = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step))
    if checkpoint is None:
        raise JobNotFound(f"job {job_id} has no checkpoint at step {step}", param="step")
    return checkpoint
