"""Fine-tune jobs: create, list, read, cancel, reprioritize."""

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from api.deps import (
    ID_PATTERN,
    AdminUser,
    AsyncCurrentUser,
    CurrentUser,
    JobId,
    SessionDep,
    SettingsDep,
    job_view_cache,
    owner_scope,
    spec_cache,
)
from api.errors_doc import COMMON, errors
from api.schemas import DryRun, JobList, JobPatch, JobRead, Stats
from api.speccache import SpecCache
from api.viewcache import JobViewCache, Shown
from shared.db import run_read
from shared.errors import FtqError, InvalidInput, JobNotFound
from shared.files import check_dataset_file
from shared.idempotency import HEADER as IDEMPOTENCY_HEADER
from shared.idempotency import complete_key, release_key, request_hash, reserve_key
from shared.jobs import (
    cancel_job,
    check_adapter_job,
    create_job,
    fail_job_unqueued,
    get_job,
    get_job_view,
    job_views,
    list_job_ids,
    set_job_priority,
)
from shared.limits import check_queue_limit, check_rows_limit, check_spec_limits, user_limits
from shared.models import Job, JobStatus, User
from shared.paths import check_local_refs
from shared.placement import check_resources
from shared.queue import enqueue_validation, run_dry_run
from shared.scheduling import queue_positions
from shared.settings import get_settings
from shared.spec import JobSpec, is_job_id

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"], responses=errors(*COMMON))


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
    responses={
        200: {"model": DryRun, "description": "Dry run: the resolved spec, stats and planned steps."},
        **errors(504),
    },
)
def create_fine_tune_job(
    spec: JobSpec,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
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
    check_resources(session=session, spec=spec)
    uploads = [
        check_dataset_file(session=session, ref=dataset.id, owner_id=owner_scope(user), param=f"{field}.id")
        for field, dataset in spec.datasets()
    ]
    uploaded = uploads[0]  # the rows the job works through: the row limit applies to them
    if spec.adapter is not None and is_job_id(spec.adapter):
        check_adapter_job(session=session, spec=spec, owner_id=owner_scope(user))
    limits = user_limits(user)
    check_spec_limits(limits, spec)
    if uploaded is not None and uploaded.rows is not None:
        check_rows_limit(limits, spec, uploaded.rows)
    if dry_run:
        response.status_code = status.HTTP_200_OK
        return _dry_run(spec, user.id, settings.dry_run_timeout_s)
    if idempotency_key is not None:
        fingerprint = request_hash(spec.model_dump(mode="json"))
        earlier = reserve_key(session=session, owner_id=user.id, key=idempotency_key, fingerprint=fingerprint)
        if earlier is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return _job_as_shown(session, earlier, owner_scope(user))
    check_queue_limit(session, user, limits)
    job = _store_job(session, spec, user, idempotency_key)
    try:
        enqueue_validation(job.id)
    except Exception as exc:
        log.exception("enqueue of %s failed", job.id)
        fail_job_unqueued(session=session, job_id=job.id, message=f"could not reach the queue: {type(exc).__name__}")
        if idempotency_key is not None:  # a retry after this 503 must create a job, not replay the failed one
            release_key(session=session, owner_id=user.id, key=idempotency_key)
        session.commit()
        raise QueueUnavailable("the job queue is unavailable; the job was not started", param=None) from exc
    return JobRead.from_job(job)


def _store_job(session: Session, spec: JobSpec, owner: User, idempotency_key: str | None) -> Job:
    """Create and commit the job (bound to its idempotency key), before anything is enqueued."""
    owner_id = owner.id
    try:
        job = create_job(session=session, spec=spec, owner=owner)
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


def _dry_run(spec: JobSpec, owner_id: str, timeout_s: float) -> DryRun:
    try:
        answer = run_dry_run(spec.model_dump(mode="json"), owner_id, timeout_s)
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
async def list_fine_tune_jobs(
    user: AsyncCurrentUser,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    after: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="Id of the last job of the previous page.")
    ] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
) -> Response:
    """List jobs, newest first, one page at a time."""
    specs = spec_cache(get_settings().db_url)
    page = await run_read(_page_of_jobs, limit, after, status, owner_scope(user), specs, _job_views())
    return Response(page, media_type="application/json")


def _page_of_jobs(
    connection: Connection,
    limit: int,
    after: str | None,
    status: JobStatus | None,
    owner_id: str | None,
    specs: SpecCache,
    views: JobViewCache,
) -> bytes:
    """The JSON of a page (`JobList`): its jobs' ids read, each shown as kept (`api.viewcache`) or read."""
    read_at = views.generation
    page, has_more = list_job_ids(connection=connection, limit=limit, after=after, status=status, owner_id=owner_id)
    shown = {job_id: _kept_view(views, job_id, job_status) for job_id, job_status in page}  # the caller's jobs
    missing = [job_id for job_id, view in shown.items() if view is None]
    if missing:
        shown |= _views_read(connection, missing, specs, views, read_at)
    # Jobs are not deleted, but one removed by hand between the two queries is left out, not a 500.
    data = b",".join(view for view in shown.values() if view is not None)
    return b'{"object":"list","data":[%b],"has_more":%b}' % (data, b"true" if has_more else b"false")


def _kept_view(views: JobViewCache, job_id: str, status: JobStatus) -> bytes | None:
    """The kept view of a job, if kept in the status the page's query just read (else its notification is on its
    way, and the page, perhaps filtered by status, would show the job as it was)."""
    kept = views.kept(job_id)
    return kept[2] if kept is not None and kept[1] == status else None


def _views_read(
    connection: Connection, job_ids: list[str], specs: SpecCache, views: JobViewCache, read_at: int
) -> dict[str, bytes]:
    """The JSON of these jobs' views, read by id (and kept)."""
    rows = job_views(connection=connection, job_ids=job_ids)
    known = specs.specs_of(connection, job_ids)
    places = _queue_positions(connection) if any(row.status is JobStatus.queued for row in rows) else {}
    shown = {}
    for row in rows:
        if row.id in known:
            shown[row.id] = JobRead.from_view(row, known[row.id], places.get(row.id)).model_dump_json().encode()
            views.put(row.id, row.owner_id, row.status, shown[row.id], read_at)
    return shown


@router.get("/{job_id}", responses=errors(404), response_model=JobRead)
async def read_fine_tune_job(job_id: JobId, user: AsyncCurrentUser) -> Response:
    """Get one job: status, progress, stats, result and error."""
    job_owner_id, _status, view = await _job_views().shown(job_id, _read_shown)
    if owner_scope(user) in (None, job_owner_id):
        # Sent as kept or read: FastAPI would validate the model once more only to write the same JSON.
        return Response(view, media_type="application/json")
    raise JobNotFound(f"no job {job_id!r}", param="job_id")


def _job_views() -> JobViewCache:
    """The process's cache of shown jobs (`api.viewcache`)."""
    settings = get_settings()
    return job_view_cache(settings.db_url, settings.job_view_cache_size)


async def _read_shown(job_id: str) -> Shown:
    """Whose the job is, its status and its view's JSON, read for anyone (each poll checks its caller may see it)."""
    job, owner_id = await run_read(_view_as_shown, job_id)
    return owner_id, job.status, job.model_dump_json().encode()


def _view_as_shown(connection: Connection, job_id: str) -> tuple[JobRead, str]:
    """The job as the API shows it (its place in the queue while it waits) and its owner's id, from plain rows."""
    view = get_job_view(connection=connection, job_id=job_id)
    place = _queue_positions(connection).get(view.id) if view.status is JobStatus.queued else None
    return JobRead.from_view(view, JobSpec.model_validate(view.spec), place), view.owner_id


def _queue_positions(connection: Connection) -> dict[str, int]:
    with Session(connection) as session:
        return queue_positions(session=session)


def _job_as_shown(session: Session, job_id: str, owner_id: str | None) -> JobRead:
    """The job as the API shows it, with its place in the queue while it waits."""
    job = get_job(session=session, job_id=job_id, owner_id=owner_id)
    place = queue_positions(session=session).get(job.id) if job.status is JobStatus.queued else None
    return JobRead.from_job(job, place)


@router.post("/{job_id}/cancel", responses=errors(404, 409), response_model=JobRead)
def cancel_fine_tune_job(job_id: JobId, session: SessionDep, user: CurrentUser) -> JobRead:
    """Cancel a job: a queued one never starts, a running one stops at its next step (409 once it has ended)."""
    job = cancel_job(session=session, job=get_job(session=session, job_id=job_id, owner_id=owner_scope(user)))
    session.commit()
    _job_views().drop(job_id)  # the caller's next poll shows the change even before its notification arrives
    return JobRead.from_job(job)


@router.patch("/{job_id}", responses=errors(403, 404), response_model=JobRead)
def update_fine_tune_job(job_id: JobId, patch: JobPatch, session: SessionDep, _admin: AdminUser) -> JobRead:
    """Change a job's priority (admins only): higher starts sooner among jobs of equal fair share."""
    job = set_job_priority(session=session, job=get_job(session=session, job_id=job_id), priority=patch.priority)
    session.commit()
    _job_views().drop(job_id)  # as in `cancel_fine_tune_job`
    return JobRead.from_job(job, queue_positions(session=session).get(job.id))
