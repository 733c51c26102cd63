"""The workers: which GPU each is pinned to, when it last reported, and what it is training."""

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, SettingsDep
from api.errors_doc import COMMON, errors
from api.schemas_team import CurrentJob, WorkerList, WorkerRead
from shared.models import utcnow
from shared.workers import list_workers, worker_state

router = APIRouter(prefix="/workers", tags=["workers"], responses=errors(*COMMON))


@router.get("", response_model=WorkerList)
def list_all_workers(session: SessionDep, settings: SettingsDep, user: CurrentUser) -> WorkerList:
    """Every worker seen: kind, GPU, state (online/offline/stopped), heartbeat and current job."""
    now = utcnow()
    stale_after_s = settings.worker_stale_s
    data = []
    for worker, job in list_workers(session=session):
        current = None
        if job is not None:
            visible = user.is_admin or job.owner_id == user.id
            progress = job.progress or {}
            current = CurrentJob(
                id=job.id if visible else None, step=progress.get("step"), total_steps=progress.get("total_steps")
            )
        data.append(
            WorkerRead(
                name=worker.name,
                kind="validate" if worker.kind == "validate" else "gpu",
                hostname=worker.hostname,
                gpu=worker.gpu,
                gpu_name=worker.gpu_name,
                pid=worker.pid,
                state=worker_state(worker, now, stale_after_s),
                started_at=worker.started_at,
                heartbeat_at=worker.heartbeat_at,
                current_job=current,
            )
        )
    return WorkerList(data=data)
