"""A job's event log: typed, ordered by id, written in the same transaction as the change it describes."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import EventType, JobEvent, JobStatus


def add_event(
    *,
    session: Session,
    job_id: str,
    type: EventType,
    message: str,
    data: dict[str, Any] | None = None,
    level: str = "info",
) -> JobEvent:
    """Append an event to a job's log (flushed, not committed)."""
    event = JobEvent(job_id=job_id, type=type, level=level, message=message, data=data or {})
    session.add(event)
    session.flush()
    return event


def list_events(*, session: Session, job_id: str, after: int | None, limit: int) -> tuple[list[JobEvent], bool]:
    """A job's events oldest first, `limit` of them after the event id `after`, and whether more follow."""
    query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    if after is not None:
        query = query.where(JobEvent.id > after)
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def add_status_event(session: Session, job_id: str, status: JobStatus, message: str, **data: Any) -> None:
    """Append a `status` event (and, for a failure with an error, an `error` event before it)."""
    if status is JobStatus.failed and "error" in data:
        # The error itself, as its own event, before the status change it causes.
        error = data["error"]
        add_event(
            session=session, job_id=job_id, type=EventType.error, level="error", message=error["message"], data=error
        )
    add_event(
        session=session,
        job_id=job_id,
        type=EventType.status,
        message=message,
        data={"status": status.value, **data},
        level="error" if status is JobStatus.failed else "info",
    )
