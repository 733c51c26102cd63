"""What a worker's attempt at a job writes: the claim, the lease, progress, checkpoints, integrations and the
outcome. Every write is fenced by the attempt number (the fencing token the claim hands out): a write from an
attempt that is no longer current matches no row. They flush but never commit.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.errors import FtqError, JobFailure
from shared.events import add_event, add_status_event
from shared.jobs import failure_values
from shared.models import Checkpoint, EventType, Job, JobStatus, utcnow
from shared.placement import hold_box, plan_for
from shared.settings import get_settings


def claim_job(*, session: Session, job_id: str, worker: str, helpers: tuple[str, ...] = ()) -> int | None:
    """Move a queued job to `running` and bump its attempt; returns the new attempt, or None if not claimable.

    `worker` launches the attempt; `helpers` are the other workers whose GPUs it also holds.
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued, Job.cancel_requested_at.is_(None))
        .values(
            status=JobStatus.running,
            attempt=Job.attempt + 1,
            worker=worker,
            helpers=list(helpers),
            started_at=now,
            heartbeat_at=now,
            drain_requested_at=None,  # a drain asked of an earlier attempt is not this one's
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    attempt = session.scalar(select(Job.attempt).where(Job.id == job_id))
    where = worker + "".join(f", {helper}" for helper in helpers)
    add_status_event(session, job_id, JobStatus.running, f"running (attempt {attempt} on {where})", attempt=attempt)
    return attempt


def _fenced_update(session: Session, job_id: str, attempt: int, statuses: tuple[JobStatus, ...], **values: Any) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(statuses))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


RUNNING = (JobStatus.running,)


LIVE = (JobStatus.running, JobStatus.cancelling)


CONTINUE, DRAIN, STOP = "continue", "drain", "stop"


def record_progress(*, session: Session, job_id: str, attempt: int, progress: dict[str, Any]) -> str:
    """Store the latest progress and tell the trainer what to do next: CONTINUE; DRAIN (save a checkpoint and
    stop, the job goes back to the queue); or STOP (cancelled, or no longer this attempt's: save nothing)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)
        .where(Job.drain_requested_at.is_(None))
        .values(progress=progress, heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return CONTINUE
    row = session.execute(select(Job.attempt, Job.status).where(Job.id == job_id)).one_or_none()
    ours = row is not None and row.attempt == attempt and row.status is JobStatus.running
    return DRAIN if ours else STOP


def request_drain(*, session: Session, worker: str) -> list[str]:
    """Ask the jobs a worker is running to checkpoint and go back to the queue (a deploy or a shutdown)."""
    ids = list(session.scalars(select(Job.id).where(Job.worker == worker, Job.status == JobStatus.running)))
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.status == JobStatus.running)
            .values(drain_requested_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return ids


def requeue_drained(*, session: Session, job_id: str, attempt: int) -> bool:
    """Queue a drained job again; a drain is not a failure, so it spends no attempt."""
    values: dict[str, Any] = {
        "status": JobStatus.queued,
        "worker": None,
        "helpers": [],
        "drain_requested_at": None,
        "preemptions": Job.preemptions + 1,
    }
    if not _fenced_update(session, job_id, attempt, RUNNING, **values):
        return False
    add_status_event(
        session, job_id, JobStatus.queued, f"queued again: its worker is shutting down (attempt {attempt})"
    )
    return True


def attempts_spent(*, session: Session, job_id: str) -> int:
    """Attempts that count against `max_attempts`: drained attempts do not."""
    row = session.execute(select(Job.attempt, Job.preemptions).where(Job.id == job_id)).one()
    return int(row.attempt - row.preemptions)


def record_stats(*, session: Session, job_id: str, attempt: int, stats: dict[str, Any]) -> bool:
    """Store the dataset statistics of a running attempt."""
    if not _fenced_update(session, job_id, attempt, LIVE, stats=stats):
        return False
    add_event(session=session, job_id=job_id, type=EventType.log, message="dataset tokenized", data=stats)
    return True


def succeed_job(
    *, session: Session, job_id: str, attempt: int, result: dict[str, Any], progress: dict[str, Any]
) -> bool:
    """Mark a running attempt `succeeded` with its result."""
    values = {"status": JobStatus.succeeded, "result": result, "progress": progress, "finished_at": utcnow()}
    if not _fenced_update(session, job_id, attempt, RUNNING, **values):
        return False
    add_status_event(session, job_id, JobStatus.succeeded, "succeeded")
    return True


def fail_job(*, session: Session, job_id: str, attempt: int, error: FtqError) -> bool:
    """Mark a live attempt `failed` with the error's code, message and param."""
    if not _fenced_update(session, job_id, attempt, LIVE, **failure_values(error)):
        return False
    add_status_event(session, job_id, JobStatus.failed, f"failed: {error.code}", error=error.as_dict())
    return True


def finish_cancel(*, session: Session, job_id: str, attempt: int) -> bool:
    """Mark a cancelling attempt `cancelled` once its trainer has stopped."""
    if not _fenced_update(
        session, job_id, attempt, (JobStatus.cancelling,), status=JobStatus.cancelled, finished_at=utcnow()
    ):
        return False
    add_status_event(session, job_id, JobStatus.cancelled, "cancelled")
    return True


def is_cancelling(*, session: Session, job_id: str, attempt: int) -> bool:
    """True while the attempt is current and a cancel waits for it to stop."""
    row = session.execute(select(Job.attempt, Job.status).where(Job.id == job_id)).one_or_none()
    return row is not None and row.attempt == attempt and row.status == JobStatus.cancelling


def _is_live_attempt(session: Session, job_id: str, attempt: int) -> bool:
    # An update, not a read: it locks the row until commit (PostgreSQL) and moves heartbeat_at, so a reconciler
    # that saw the old heartbeat cannot take the job back between this check and the write that follows.
    return _fenced_update(session, job_id, attempt, LIVE, heartbeat_at=utcnow())


def record_metrics(*, session: Session, job_id: str, attempt: int, step: int, metrics: dict[str, float | None]) -> bool:
    """Append a `progress` event with the metrics logged at a step."""
    if not _is_live_attempt(session, job_id, attempt):
        return False
    loss = metrics.get("loss")
    summary = f"step {step}: loss {loss:.4f}" if loss is not None else f"step {step}: loss is not finite"
    data = {"step": step, "attempt": attempt, **metrics}
    add_event(session=session, job_id=job_id, type=EventType.progress, message=summary, data=data)
    return True


def record_checkpoint(
    *, session: Session, job_id: str, attempt: int, step: int, path: str, metrics: dict[str, float | None]
) -> Checkpoint | None:
    """Record a checkpoint that is complete on disk, with a `checkpoint` event."""
    if not _is_live_attempt(session, job_id, attempt):
        return None
    checkpoint = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step))
    if checkpoint is None:
        checkpoint = Checkpoint(job_id=job_id, step=step, path=path, metrics=metrics)
        session.add(checkpoint)
    else:  # a resumed attempt saved the same step again
        checkpoint.path, checkpoint.metrics, checkpoint.created_at = path, metrics, utcnow()
    session.flush()
    add_event(
        session=session,
        job_id=job_id,
        type=EventType.checkpoint,
        message=f"checkpoint at step {step}",
        data={"step": step, "metrics": metrics},
    )
    return checkpoint


def requeue_job(*, session: Session, job_id: str, attempt: int, reason: str, oom: bool = False) -> bool:
    """Hand a live attempt's job back to the queue (it resumes from its last complete checkpoint)."""
    values: dict[str, Any] = {"status": JobStatus.queued, "worker": None, "helpers": []}
    if oom:
        values["oom_retries"] = Job.oom_retries + 1
    if not _fenced_update(session, job_id, attempt, RUNNING, **values):
        return False
    add_status_event(session, job_id, JobStatus.queued, f"queued again after attempt {attempt} was lost")
    add_event(
        session=session,
        job_id=job_id,
        type=EventType.warning,
        level="warning",
        message=f"attempt {attempt} lost ({reason}); queued again to resume from the last checkpoint",
        data={"status": JobStatus.queued.value, "attempt": attempt, "reason": reason},
    )
    return True


def record_log(*, session: Session, job_id: str, attempt: int, message: str, data: dict[str, Any]) -> bool:
    """Append a `log` event from a live attempt."""
    if not _is_live_attempt(session, job_id, attempt):
        return False
    add_event(session=session, job_id=job_id, type=EventType.log, message=message, data=data)
    return True


def record_wandb(
    *, session: Session, job_id: str, attempt: int, run_id: str, url: str | None, directory: str, mode: str
) -> bool:
    """Keep the W&B run id, URL (online) or local directory (offline) on the job, with a `wandb` event."""
    values = {"wandb_run_id": run_id, "wandb_url": url, "wandb_dir": directory}
    if not _fenced_update(session, job_id, attempt, LIVE, **values):
        return False
    where = url or f"offline run in {directory}"
    data = {"run_id": run_id, "url": url, "dir": directory, "mode": mode}
    add_event(session=session, job_id=job_id, type=EventType.wandb, message=f"W&B run: {where}", data=data)
    return True


def record_hub_commit(*, session: Session, job_id: str, attempt: int, step: int | None, url: str) -> bool:
    """Keep a landed Hub commit on its checkpoint (step None: the final adapter) with a `hub` event."""
    if not _is_live_attempt(session, job_id, attempt):
        return False
    if step is not None:
        session.execute(
            update(Checkpoint)
            .where(Checkpoint.job_id == job_id, Checkpoint.step == step)
            .values(hub_commit_url=url)
            .execution_options(synchronize_session=False)
        )
    what = f"checkpoint at step {step}" if step is not None else "final adapter"
    add_event(
        session=session,
        job_id=job_id,
        type=EventType.hub,
        message=f"pushed {what} to the Hub: {url}",
        data={"step": step, "commit_url": url},
    )
    return True


def record_hub_failure(*, session: Session, job_id: str, attempt: int, step: int | None, message: str) -> bool:
    """Record a Hub push that failed (the checkpoint stays on disk)."""
    if not _is_live_attempt(session, job_id, attempt):
        return False
    what = f"checkpoint at step {step}" if step is not None else "final adapter"
    add_event(
        session=session,
        job_id=job_id,
        type=EventType.warning,
        level="warning",
        message=f"push of {what} to the Hub failed: {message}",
        data={"step": step},
    )
    return True


def heartbeat(*, session: Session, job_id: str, attempt: int) -> bool:
    """Extend a live attempt's lease; False means the attempt was fenced off and must stop."""
    return _fenced_update(session, job_id, attempt, LIVE, heartbeat_at=utcnow())


def reclaim_expired(*, session: Session, ttl_s: float, max_attempts: int) -> list[str]:
    """Take back jobs whose worker stopped heartbeating: queue them again (to resume), or end them.

    Returns the ids queued again, to be enqueued once this transaction commits. Each change is conditional on
    the attempt and heartbeat seen, so two reconcilers (or a worker waking up) cannot both act on one job.
    """
    cutoff = utcnow() - timedelta(seconds=ttl_s)
    expired = session.execute(
        select(Job.id, Job.attempt, Job.preemptions, Job.status, Job.heartbeat_at).where(
            Job.status.in_(LIVE), Job.heartbeat_at < cutoff
        )
    ).all()
    requeued = []
    for job_id, attempt, preemptions, status, seen in expired:
        fence = (Job.id == job_id, Job.attempt == attempt, Job.heartbeat_at == seen, Job.status == status)
        if status is JobStatus.cancelling:
            values: dict[str, Any] = {"status": JobStatus.cancelled, "finished_at": utcnow()}
        elif attempt - preemptions < max_attempts:
            values = {"status": JobStatus.queued, "worker": None, "helpers": []}
        else:
            lost = JobFailure(f"the worker stopped responding on attempt {attempt}", code="worker_lost")
            values = failure_values(lost)
        result = session.execute(
            update(Job).where(*fence).values(**values).execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            continue
        new_status = values["status"]
        failure = {"error": lost.as_dict()} if new_status is JobStatus.failed else {}
        message = f"{new_status.value}: worker lost (no heartbeat for {ttl_s:.0f}s)"
        add_status_event(session, job_id, new_status, message, **failure)
        if new_status is JobStatus.queued:
            requeued.append(job_id)
    return requeued


@dataclass(frozen=True)
class Claim:
    """An attempt this worker launches, with the other workers whose GPUs it holds and every GPU's device index
    (this worker's first; None where a worker reported none)."""

    job_id: str
    attempt: int
    helpers: tuple[str, ...] = ()
    devices: tuple[str | None, ...] = (None,)
    time_limit_s: int | None = None


def claim_next_job(*, session: Session, worker: str, tries: int = 5) -> Claim | None:
    """Claim the job this worker should launch now (a message is only a bell: any queued job may answer it): the
    next in fair-share order that fits free GPUs of its box, with the reservation rules of shared/placement."""
    hold_box(session=session, worker=worker)
    for _ in range(tries):
        starts, devices = plan_for(session=session, worker=worker, stale_after_s=get_settings().worker_stale_s)
        mine = next((start for start in starts if start.workers[0] == worker), None)
        if mine is None:
            return None
        job = session.get(Job, mine.job_id)
        helpers = mine.workers[1:]
        attempt = claim_job(session=session, job_id=mine.job_id, worker=worker, helpers=helpers)
        if attempt is not None:
            limit = job.time_limit_s if job is not None else None
            return Claim(mine.job_id, attempt, helpers, tuple(devices.get(name) for name in mine.workers), limit)
    return None  # workers of other boxes kept winning; their bells will come round again


def others_can_start(*, session: Session, worker: str) -> bool:
    """Whether a job this worker may not launch could start on other workers' free GPUs now (its bell, taken here,
    should be rung again for them)."""
    starts, _devices = plan_for(session=session, worker=worker, stale_after_s=get_settings().worker_stale_s)
    return any(start.workers[0] != worker for start in starts)
