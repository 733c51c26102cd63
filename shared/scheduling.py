"""Which queued job a free GPU takes next: fair share between users, then priority, then age.

Fair share: a user with fewer jobs running goes first (a user with one running job waits behind a user with
none); between users with as many running, the one whose last job started longest ago goes first, so users
take turns even on a single GPU. Then, within those turns, higher priority first, then the job that waited
longest. A user at their `max_running` cap waits until one of their jobs ends. The same order gives
`queue_position`, predicted as if no running job ended meanwhile.
"""

import heapq
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, User, as_utc

LIVE = (JobStatus.running, JobStatus.cancelling)


@dataclass(frozen=True)
class QueuedJob:
    """What the scheduler needs to know of one queued job."""

    id: str
    owner_id: str
    priority: int
    created_at: datetime
    gpus: int = 1
    time_limit_s: int | None = None


Turn = tuple[int, datetime | int]  # (0, a real start) sorts before (1, the n-th start predicted here)
NEVER: Turn = (0, datetime.min.replace(tzinfo=UTC))


def fair_order(
    queued: list[QueuedJob],
    running: dict[str, int],
    caps: dict[str, int | None],
    last_started: dict[str, datetime] | None = None,
) -> tuple[list[str], list[str]]:
    """The order in which `queued` would start if each start added to its owner's running count and made them
    the latest to start, and the jobs held back because their owner would be at their cap.

    `running` counts each owner's live jobs; `caps` is each owner's `max_running` (None: no cap);
    `last_started` is when each owner's most recent job started.
    """
    by_owner: dict[str, list[tuple[int, datetime, str]]] = {}
    for job in queued:
        by_owner.setdefault(job.owner_id, []).append((-job.priority, job.created_at, job.id))
    for jobs in by_owner.values():
        jobs.sort()
    started: dict[str, Turn] = {owner: (0, as_utc(at)) for owner, at in (last_started or {}).items()}
    # Heap entries: (running, turn, -priority, created_at, id, owner).
    heads: list[tuple[int, Turn, int, datetime, str, str]] = [
        (running.get(owner, 0), started.get(owner, NEVER), *jobs[0], owner) for owner, jobs in by_owner.items()
    ]
    heapq.heapify(heads)
    order: list[str] = []
    held: list[str] = []
    next_index = dict.fromkeys(by_owner, 0)
    while heads:
        share, _turn, _priority, _created, job_id, owner = heapq.heappop(heads)
        cap = caps.get(owner)
        if cap is not None and share >= cap:
            held.extend(entry[2] for entry in by_owner[owner][next_index[owner] :])
            continue
        order.append(job_id)
        next_index[owner] += 1
        if next_index[owner] < len(by_owner[owner]):
            turn: Turn = (1, len(order))
            heapq.heappush(heads, (share + 1, turn, *by_owner[owner][next_index[owner]], owner))
    return order, held


def _queued(session: Session) -> list[QueuedJob]:
    rows = session.execute(
        select(Job.id, Job.owner_id, Job.priority, Job.created_at, Job.gpus, Job.time_limit_s).where(
            Job.status == JobStatus.queued, Job.cancel_requested_at.is_(None)
        )
    ).all()
    return [QueuedJob(*row) for row in rows]


def _running_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.owner_id, func.count()).where(Job.status.in_(LIVE)).group_by(Job.owner_id))
    return {owner: int(count) for owner, count in rows}


def _last_started(session: Session, owners: set[str]) -> dict[str, datetime]:
    if not owners:
        return {}
    query = select(Job.owner_id, func.max(Job.started_at)).where(Job.owner_id.in_(owners)).group_by(Job.owner_id)
    return {owner: at for owner, at in session.execute(query) if at is not None}


def _running_caps(session: Session, owners: set[str]) -> dict[str, int | None]:
    if not owners:
        return {}
    rows = session.execute(select(User.id, User.limits).where(User.id.in_(owners)))
    return {user_id: (limits or {}).get("max_running") for user_id, limits in rows}


def _schedule(session: Session) -> tuple[list[QueuedJob], list[str]]:
    queued = _queued(session)
    owners = {job.owner_id for job in queued}
    order, held = fair_order(
        queued, _running_counts(session), _running_caps(session, owners), _last_started(session, owners)
    )
    by_id = {job.id: job for job in queued}
    return [by_id[job_id] for job_id in order], held


def queued_in_order(*, session: Session) -> list[QueuedJob]:
    """The queued jobs free GPUs may start, in the order they should (owners at their cap left out)."""
    return _schedule(session)[0]


def jobs_waiting(*, session: Session) -> bool:
    """Whether any job is validating or queued: work a spare trainer would soon take."""
    waiting = select(Job.id).where(Job.status.in_((JobStatus.validating, JobStatus.queued))).limit(1)
    return session.scalar(waiting) is not None


def queue_positions(*, session: Session) -> dict[str, int]:
    """1-based place in line of every queued job, in scheduling order."""
    order, held = _schedule(session)
    return {job_id: place for place, job_id in enumerate([job.id for job in order] + held, start=1)}
