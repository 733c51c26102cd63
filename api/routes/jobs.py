"""Fine-tune jobs: create, list, read."""

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from sqlalchemy.orm import Session

from api.deps import CurrentKey, SessionDep, SettingsDep, owner_scope
from api.schemas import DryRun, JobList, JobRead, Stats
from shared.errors import FtqError, InvalidInput
from shared.files import check_dataset_file
from shared.idempotency import HEADER as IDEMPOTENCY_HEADER
from shared.idempotency import complete_key, release_key, request_hash, reserve_key
from shared.jobs import cancel_job, create_job, fail_job_unqueued, get_job, list_jobs, queue_positions
from shared.models import Job, JobStatus
from shared.paths import check_local_refs
from shared.queue import enqueue_validation, run_dry_run
from shared.spec import JobSpec

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])


class QueueUnavailable(FtqError):
    """The job was stored but the broker could not be reached."""

    status_code = 503
    code = "queue_unavailable"


class ValidationTimeout(FtqError):
    """No validation worker answered a dry run in time."""

    status_code = 504
    code = "validation_timeout"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobRead | DryRun,
    responses={200: {"model": DryRun, "description": "Dry run: the resolved spec, stats and planned steps."}},
)
def create_fine_tune_job(
    spec: JobSpec,
    session: SessionDep,
    settings: SettingsDep,
    key: CurrentKey,
    response: Response,
    dry_run: Annotated[bool, Query(description="Validate and plan only: nothing is stored or queued.")] = False,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_HEADER,
            min_length=1,
            max_length=255,
            description="Retry safely: the same key and body within 24 h return the job the first request created.",
        ),
    ] = None,
) -> JobRead | DryRun:
    """Store a fine-tune job and have its data validated before it is queued (or, with `dry_run`, only validate)."""
    check_local_refs(spec, settings.allowed_roots)
    check_dataset_file(session=session, ref=spec.dataset.id, owner_id=owner_scope(key))
    if dry_run:
        response.status_code = status.HTTP_200_OK
        return _dry_run(spec, settings.dry_run_timeout_s)
    if idempotency_key is not None:
        fingerprint = request_hash(spec.model_dump(mode="json"))
        earlier = reserve_key(session=session, owner_id=key.id, key=idempotency_key, fingerprint=fingerprint)
        if earlier is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return read_fine_tune_job(earlier, session, key)
    job = _store_job(session, spec, key.id, idempotency_key)
    try:
        enqueue_validation(job.id)
    except Exception as exc:
        log.exception("enqueue of %s failed", job.id)
        fail_job_unqueued(session=session, job_id=job.id, message=f"could not reach the queue: {type(exc).__name__}")
        if idempotency_key is not None:  # a retry after this 503 must create a job, not replay the failed one
            release_key(session=session, owner_id=key.id, key=idempotency_key)
        session.commit()
        raise QueueUnavailable("the job queue is unavailable; the job was not started", param=None) from exc
    return JobRead.from_job(job)


def _store_job(session: Session, spec: JobSpec, owner_id: str, idempotency_key: str | None) -> Job:
    """Create and commit the job (bound to its idempotency key), before anything is enqueued."""
    try:
        job = create_job(session=session, spec=spec, owner_id=owner_id)
        if idempotency_key is not None:
            complete_key(session=session, owner_id=owner_id, key=idempotency_key, job_id=job.id)
        session.commit()
    except BaseException:
        session.rollback()
        if idempotency_key is not None:
            release_key(session=session, owner_id=owner_id, key=idempotency_key)
            session.commit()
        raise
    return job


def _dry_run(spec: JobSpec, timeout_s: float) -> DryRun:
    try:
        answer = run_dry_run(spec.model_dump(mode="json"), timeout_s)
    except TimeoutError as exc:
        raise ValidationTimeout(str(exc)) from exc
    except Exception as exc:
        raise QueueUnavailable(f"the job queue is unavailable: {type(exc).__name__}") from exc
    if "error" in answer:
        error = answer["error"]
        raise InvalidInput(error["message"], code=error["code"], param=error["param"])
    return DryRun(
        spec=spec, stats=Stats(**answer["stats"]), planned_steps=answer["planned_steps"], warnings=answer["warnings"]
    )


@router.get("", response_model=JobList)
def list_fine_tune_jobs(
    session: SessionDep,
    key: CurrentKey,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    after: Annotated[str | None, Query(max_length=64, description="Id of the last job of the previous page.")] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
) -> JobList:
    """List jobs, newest first, one page at a time."""
    jobs, has_more = list_jobs(session=session, limit=limit, after=after, status=status, owner_id=owner_scope(key))
    places = queue_positions(session=session)
    return JobList(data=[JobRead.from_job(job, places.get(job.id)) for job in jobs], has_more=has_more)


@router.get("/{job_id}", response_model=JobRead)
def read_fine_tune_job(job_id: str, session: SessionDep, key: CurrentKey) -> JobRead:
    """Get one job: status, progress, stats, result and error."""
    job = get_job(session=session, job_id=job_id, owner_id=owner_scope(key))
    return JobRead.from_job(job, queue_positions(session=session).get(job.id))


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_fine_tune_job(job_id: str, session: SessionDep, key: CurrentKey) -> JobRead:
    """Cancel a job: a queued one never starts, a running one stops at its next step (409 once it has ended)."""
    job = cancel_job(session=session, job=get_job(session=session, job_id=job_id, owner_id=owner_scope(key)))
    session.commit()
    return JobRead.from_job(job)
