"""Job operations shared by the API and the worker. They flush but never commit: the caller owns the transaction.

Writes by a worker are fenced by `attempt`: a write from an attempt that is no longer current matches no row.
"""

from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from shared.errors import FtqError, JobNotFound
from shared.models import Job, JobStatus, utcnow
from shared.spec import JobSpec


def create_job(*, session: Session, spec: JobSpec, owner_id: str) -> Job:
    """Store a new job in `queued` with its resolved spec."""
    job = Job(
        owner_id=owner_id,
        status=JobStatus.queued,
        spec=spec.model_dump(mode="json"),
        metadata_=dict(spec.metadata),
    )
    session.add(job)
    session.flush()
    return job


def get_job(*, session: Session, job_id: str) -> Job:
    """The job with this id, or JobNotFound."""
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}", param="job_id")
    return job


def list_jobs(
    *, session: Session, limit: int, after: str | None = None, status: JobStatus | None = None
) -> tuple[list[Job], bool]:
    """Jobs newest first, `limit` of them after the cursor job, and whether more follow."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
    if status is not None:
        query = query.where(Job.status == status)
    if after is not None:
        cursor = get_job(session=session, job_id=after)
        query = query.where(
            or_(
                Job.created_at < cursor.created_at,
                and_(Job.created_at == cursor.created_at, Job.id < cursor.id),
            )
        )
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def claim_job(*, session: Session, job_id: str, worker: str) -> int | None:
    """Move a queued job to `running` and bump its attempt; returns the new attempt, or None if not claimable."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            attempt=Job.attempt + 1,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.scalar(select(Job.attempt).where(Job.id == job_id))


def _fenced_update(session: Session, job_id: str, attempt: int, **values: Any) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def record_progress(*, session: Session, job_id: str, attempt: int, progress: dict[str, Any]) -> bool:
    """Store the latest progress of a running attempt; False when the attempt is fenced off."""
    return _fenced_update(session, job_id, attempt, progress=progress, heartbeat_at=utcnow())


def record_stats(*, session: Session, job_id: str, attempt: int, stats: dict[str, Any]) -> bool:
    """Store the dataset statistics of a running attempt."""
    return _fenced_update(session, job_id, attempt, stats=stats)


def succeed_job(
    *, session: Session, job_id: str, attempt: int, result: dict[str, Any], progress: dict[str, Any]
) -> bool:
    """Mark a running attempt `succeeded` with its result."""
    return _fenced_update(
        session,
        job_id,
        attempt,
        status=JobStatus.succeeded,
        result=result,
        progress=progress,
        finished_at=utcnow(),
    )


def fail_job(*, session: Session, job_id: str, attempt: int, error: FtqError) -> bool:
    """Mark a running attempt `failed` with the error's code, message and param."""
    return _fenced_update(
        session,
        job_id,
        attempt,
        status=JobStatus.failed,
        error_code=error.code,
        error_message=error.message[:4000],
        error_param=error.param,
        finished_at=utcnow(),
    )


def is_current_attempt(*, session: Session, job_id: str, attempt: int) -> bool:
    """True while `attempt` is the live, running attempt of the job."""
    row = session.execute(select(Job.attempt, Job.status).where(Job.id == job_id)).one_or_none()
    return row is not None and row.attempt == attempt and row.status == JobStatus.running


def fail_job_unqueued(*, session: Session, job_id: str, message: str) -> None:
    """Fail a job that never reached the queue, so it does not sit `queued` forever."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(
            status=JobStatus.failed,
            error_code="queue_unavailable",
            error_message=message,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
