"""Where queued jobs start: a job asking for N GPUs takes N free GPUs of one box, launched by one of their workers.

A GPU is an online training worker (one per GPU); a box is the host its workers report. A GPU is busy while a
live job names its worker, as the launcher (`Job.worker`) or as a helper (`Job.helpers`).

Jobs are taken in fair-share order (shared/scheduling). The first job that cannot start now holds a reservation
(EASY backfill): on the box where it can start soonest, the free GPUs wait for it, and a later job may take one
only if its time limit ends it before the reserved job's predicted start (when enough running jobs there end, by
their time limits or progress ETAs). With no prediction nothing backfills there. So a job asking for many GPUs is
never starved by a stream of small ones, and small jobs still use GPUs that would otherwise idle.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.errors import InvalidInput
from shared.models import Job, Worker, as_utc, utcnow
from shared.scheduling import LIVE, queued_in_order
from shared.spec import JobSpec

GPU_WORKER = "gpu"


@dataclass(frozen=True)
class Gpu:
    """One training worker's GPU as the scheduler sees it."""

    worker: str
    box: str
    busy: bool = False
    ends_at: datetime | None = None  # for a busy GPU: when its job is predicted to end (None: unknown)


class Placeable(Protocol):
    """A queued job, as much as placement needs (shared.scheduling.QueuedJob is one)."""

    @property
    def id(self) -> str: ...

    @property
    def gpus(self) -> int: ...

    @property
    def time_limit_s(self) -> int | None: ...


@dataclass(frozen=True)
class Start:
    """A job that can start now, on these workers' GPUs of one box (the first one launches it)."""

    job_id: str
    box: str
    workers: tuple[str, ...]


@dataclass(frozen=True)
class Reservation:
    """The box held for the first job that cannot start, and when it is predicted to (None: unknown)."""

    job_id: str
    box: str
    starts_at: datetime | None


def _start_time(free: int, ends: list[datetime | None], need: int, now: datetime) -> datetime | None:
    """When `need` GPUs of a box will be free: now, or when enough busy ones end (None if one of those is unknown)."""
    if free >= need:
        return now
    known = sorted(end for end in ends if end is not None)
    missing = need - free
    return max(known[missing - 1], now) if len(known) >= missing else None


def plan_starts(
    order: Sequence[Placeable], gpus: list[Gpu], now: datetime, prefer: str | None = None
) -> tuple[list[Start], Reservation | None]:
    """Which of the `order`ed jobs start now and on which GPUs, and the reservation held for the first that cannot.

    Among a box's free GPUs, `prefer`'s worker is taken first (the worker asking launches what it starts). A job
    goes to the box with the fewest free GPUs that fit it, keeping larger runs of free GPUs for larger jobs.
    """
    free: dict[str, list[str]] = {}
    ends: dict[str, list[datetime | None]] = {}
    for gpu in sorted(gpus, key=lambda g: (g.worker != prefer, g.worker)):
        free.setdefault(gpu.box, [])
        ends.setdefault(gpu.box, [])
        if gpu.busy:
            ends[gpu.box].append(gpu.ends_at)
        else:
            free[gpu.box].append(gpu.worker)
    size = {box: len(free[box]) + len(ends[box]) for box in free}
    starts: list[Start] = []
    reservation: Reservation | None = None
    for job in order:
        boxes = sorted(box for box in size if size[box] >= job.gpus)  # a job no box can hold waits for one
        ready = [box for box in boxes if len(free[box]) >= job.gpus]
        if reservation is not None:
            ready = [box for box in ready if box != reservation.box or _ends_before(job, now, reservation.starts_at)]
        if ready:
            box = min(ready, key=lambda b: len(free[b]))
            taken, free[box] = free[box][: job.gpus], free[box][job.gpus :]
            starts.append(Start(job.id, box, tuple(taken)))
        elif reservation is None and boxes:
            when = {box: _start_time(len(free[box]), ends[box], job.gpus, now) for box in boxes}
            box = min(boxes, key=lambda b: (when[b] is None, when[b] or now))
            reservation = Reservation(job.id, box, when[box])
    return starts, reservation


def _ends_before(job: Placeable, now: datetime, starts_at: datetime | None) -> bool:
    return (
        job.time_limit_s is not None
        and starts_at is not None
        and now + timedelta(seconds=job.time_limit_s) <= starts_at
    )


def _predicted_end(job: Job, now: datetime) -> datetime | None:
    ends = []
    if job.time_limit_s is not None and job.started_at is not None:
        ends.append(as_utc(job.started_at) + timedelta(seconds=job.time_limit_s))
    eta = (job.progress or {}).get("eta_seconds")
    if isinstance(eta, int | float):
        ends.append(now + timedelta(seconds=eta))
    return min(ends, default=None)


def _live_jobs(session: Session) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.status.in_(LIVE))))


def holders(jobs: Iterable[Job]) -> dict[str, Job]:
    """The live job holding each worker's GPU, as its launcher or a helper."""
    held: dict[str, Job] = {}
    for job in jobs:
        for name in [job.worker, *(job.helpers or [])]:
            if name is not None:
                held[name] = job
    return held


def cluster_gpus(*, session: Session, now: datetime, stale_after_s: float) -> dict[str, tuple[Gpu, str | None]]:
    """Every online training worker's GPU, by worker name, with its CUDA device index."""
    cutoff = now - timedelta(seconds=stale_after_s)
    workers = session.scalars(
        select(Worker).where(Worker.kind == GPU_WORKER, Worker.stopped_at.is_(None), Worker.heartbeat_at >= cutoff)
    )
    held = holders(_live_jobs(session))
    gpus = {}
    for worker in workers:
        job = held.get(worker.name)
        ends_at = _predicted_end(job, now) if job is not None else None
        gpus[worker.name] = (Gpu(worker.name, worker.hostname, job is not None, ends_at), worker.gpu)
    return gpus


def hold_box(*, session: Session, worker: str) -> None:
    """Lock the training workers of `worker`'s box until the transaction ends, so that the workers of one box claim
    one at a time and two claims never take one GPU (boxes share no GPUs: claims on different boxes never wait).

    PostgreSQL: their rows, locked in name order (two claimants cannot each hold a row the other waits for); SQLite:
    the database's write lock, which a write takes (a transaction's reads before it would see an older state)."""
    box = select(Worker.hostname).where(Worker.name == worker).scalar_subquery()
    mine = (Worker.hostname == box, Worker.kind == GPU_WORKER)
    if session.get_bind().dialect.name == "sqlite":
        update_rows = update(Worker).where(*mine).values(heartbeat_at=Worker.heartbeat_at)
        session.execute(update_rows.execution_options(synchronize_session=False))
    else:
        session.execute(select(Worker.name).where(*mine).order_by(Worker.name).with_for_update())


def is_stopped(*, session: Session, name: str) -> bool:
    """Whether the worker's row says it has begun to shut down (a warm shutdown; False for a name never
    registered)."""
    return session.scalar(select(Worker.stopped_at).where(Worker.name == name)) is not None


def plan_for(*, session: Session, worker: str, stale_after_s: float) -> tuple[list[Start], dict[str, str | None]]:
    """Every start possible now (the asking worker's GPU preferred) and each worker's device index. A stopping
    worker starts nothing."""
    if is_stopped(session=session, name=worker):
        return [], {}
    now = utcnow()
    gpus = cluster_gpus(session=session, now=now, stale_after_s=stale_after_s)
    if worker not in gpus:  # no row yet, or a stale one (the database was away): it still serves its own GPU
        busy = worker in holders(_live_jobs(session))
        gpus[worker] = (Gpu(worker, f"{worker} (unregistered)", busy), None)
    order = queued_in_order(session=session)
    starts, _reservation = plan_starts(order, [gpu for gpu, _device in gpus.values()], now, prefer=worker)
    return starts, {name: device for name, (_gpu, device) in gpus.items()}


def largest_box(*, session: Session) -> int | None:
    """The most training workers any one box has registered (stopped ones too: a box restarting is still there);
    None before any has."""
    rows = session.execute(select(Worker.hostname).where(Worker.kind == GPU_WORKER)).scalars()
    counts: dict[str, int] = {}
    for hostname in rows:
        counts[hostname] = counts.get(hostname, 0) + 1
    return max(counts.values(), default=None)


def check_resources(*, session: Session, spec: JobSpec) -> None:
    """422 on `resources.gpus` when the GPUs cannot hold the job: not one box that large, a batch that does not
    split evenly over them, or an evaluation (which runs on one GPU)."""
    gpus = spec.resources.gpus
    if gpus == 1:
        return
    if spec.kind == "evaluation":
        raise InvalidInput("an evaluation job runs on one GPU", code="invalid_value", param="resources.gpus")
    if spec.evaluation is not None and spec.evaluation.at_checkpoints:
        # Rank 0 alone scores a checkpoint, while the other ranks wait in the next step's collective.
        raise InvalidInput(
            "evaluation.at_checkpoints scores on one GPU: train on one, or score the checkpoints afterwards",
            code="invalid_value",
            param="resources.gpus",
        )
    batch = spec.hyperparameters.batch_size
    if batch % gpus:
        raise InvalidInput(
            f"batch_size {batch} does not split evenly over {gpus} GPUs (each takes an equal share of a step)",
            code="invalid_value",
            param="resources.gpus",
        )
    largest = largest_box(session=session)
    if largest is not None and gpus > largest:
        raise InvalidInput(
            f"{gpus} GPUs asked, but the largest box has {largest}", code="not_enough_gpus", param="resources.gpus"
        )
