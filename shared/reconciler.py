"""Takes back jobs whose worker died (no heartbeat within the lease) and queues them again to resume."""

import logging

from shared.db import session_scope
from shared.jobs import reclaim_expired
from shared.queue import enqueue_job
from shared.settings import get_settings

log = logging.getLogger(__name__)


def reconcile_once() -> list[str]:
    """One pass: requeue expired jobs (committing first), then ring the workers' bell for each."""
    settings = get_settings()
    with session_scope() as session:
        requeued = reclaim_expired(session=session, ttl_s=settings.lease_ttl_s, max_attempts=settings.max_attempts)
        session.commit()
    for job_id in requeued:
        log.warning("job %s lost its worker; queued again to resume", job_id)
        enqueue_job(job_id)
    return requeued
