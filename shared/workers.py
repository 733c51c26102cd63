"""The worker registry: each worker process writes its row on start, every heartbeat, and on stop.

`GET /workers` reads it; a worker's current job is the live job that names it, as the worker that launched it
(`Job.worker`) or as one whose GPU it also holds (`Job.helpers`).
"""

from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, Worker, as_utc, utcnow
from shared.placement import holders

LIVE = (JobStatus.running, JobStatus.cancelling)


def register_worker(
    *, session: Session, name: str, kind: str, hostname: str, gpu: str | None, gpu_name: str | None, pid: int
) -> Worker:
    """Write (or rewrite, on a restart under the same name) a worker's row."""
    now = utcnow()
    worker = session.get(Worker, name)
    if worker is None:
        worker = Worker(name=name)
        session.add(worker)
    worker.kind, worker.hostname, worker.gpu, worker.gpu_name, worker.pid = kind, hostname, gpu, gpu_name, pid
    worker.started_at, worker.heartbeat_at, worker.stopped_at = now, now, None
    session.flush()
    return worker


def beat_worker(*, session: Session, name: str, pid: int) -> bool:
    """Record that the worker is alive; False if its row now belongs to another process of the same name, or was
    marked stopped (a beat racing the stop must not revive a worker that has begun to shut down)."""
    result = session.execute(
        update(Worker)
        .where(Worker.name == name, Worker.pid == pid, Worker.stopped_at.is_(None))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def stop_worker(*, session: Session, name: str, pid: int) -> None:
    """Mark a worker stopped (a clean shutdown)."""
    session.execute(
        update(Worker)
        .where(Worker.name == name, Worker.pid == pid)
        .values(stopped_at=utcnow())
        .execution_options(synchronize_session=False)
    )


WorkerState = Literal["online", "offline", "stopped"]


def worker_state(worker: Worker, now: datetime, stale_after_s: float) -> WorkerState:
    """`online`, `offline` (no heartbeat for `stale_after_s`) or `stopped`."""
    if worker.stopped_at is not None:
        return "stopped"
    return "online" if now - as_utc(worker.heartbeat_at) <= timedelta(seconds=stale_after_s) else "offline"


def list_workers(*, session: Session) -> list[tuple[Worker, Job | None]]:
    """Every worker ever seen, GPU workers first, with the live job it holds (as launcher or as a helper)."""
    workers = list(session.scalars(select(Worker).order_by(Worker.kind, Worker.name)))
    holding = holders(session.scalars(select(Job).where(Job.status.in_(LIVE))))
    return [(worker, holding.get(worker.name)) for worker in workers]
