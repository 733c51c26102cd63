"""The reconciler keeps the broker in step with the database, which is the source of truth:

- jobs whose worker died (no heartbeat within the lease) are queued again to resume, or ended;
- jobs stuck `validating` (their message was lost, or the API died between commit and publish) are re-sent;
- the GPU queue holds at least one message per queued job (messages lost to a Redis flush are replaced).

Messages are only bells: a GPU worker that takes one claims the job that has waited longest, so an extra
message claims nothing and a missing one is made up on the next pass.
"""

import logging
from dataclasses import dataclass, field

from shared.attempts import reclaim_expired
from shared.db import session_scope
from shared.idempotency import purge_expired_keys
from shared.jobs import count_queued, mark_dispatched, oldest_queued, stale_validations
from shared.queue import enqueue_job, enqueue_validation, queue_length
from shared.settings import get_settings

log = logging.getLogger(__name__)


@dataclass
class Pass:
    """What one reconciler pass did."""

    requeued: list[str] = field(default_factory=list)
    revalidated: list[str] = field(default_factory=list)
    bells: list[str] = field(default_factory=list)


def reconcile_once() -> Pass:
    """One pass; each database change is committed before any message is sent."""
    settings = get_settings()
    done = Pass()
    with session_scope() as session:
        done.requeued = reclaim_expired(session=session, ttl_s=settings.lease_ttl_s, max_attempts=settings.max_attempts)
        purge_expired_keys(session=session)
        session.commit()
        done.revalidated = stale_validations(session=session, older_than_s=settings.redispatch_after_s)
        mark_dispatched(session=session, job_ids=done.revalidated)
        session.commit()
    for job_id in done.revalidated:
        log.warning("job %s still validating; validation message sent again", job_id)
        enqueue_validation(job_id)
    for job_id in done.requeued:
        log.warning("job %s lost its worker; queued again to resume", job_id)
        enqueue_job(job_id)
    with session_scope() as session:
        missing = count_queued(session=session) - queue_length(settings.queue_name)
        done.bells = oldest_queued(session=session, limit=missing) if missing > 0 else []
    for job_id in done.bells:
        log.warning("queued job %s has no message in the queue; sending one", job_id)
        enqueue_job(job_id)
    return done
