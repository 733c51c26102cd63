"""A job's checkpoints and adapter downloads."""

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from api.deps import AsyncCurrentUser, CurrentUser, JobId, SessionDep, owner_scope
from api.errors_doc import COMMON, errors
from api.schemas import MAX_INT32, CheckpointList, CheckpointRead
from shared.artifacts import ADAPTER_FILE_PATTERNS
from shared.db import run_read
from shared.errors import JobNotFound
from shared.jobs import get_checkpoint, get_job, list_checkpoints

router = APIRouter(prefix="/jobs", tags=["checkpoints"], responses=errors(*COMMON))


@router.get("/{job_id}/checkpoints", responses=errors(404), response_model=CheckpointList)
async def list_job_checkpoints(job_id: JobId, user: AsyncCurrentUser) -> CheckpointList:
    """List a job's complete checkpoints by step."""
    return await run_read(_checkpoints_of, job_id, owner_scope(user))


def _checkpoints_of(connection: Connection, job_id: str, owner_id: str | None) -> CheckpointList:
    with Session(connection) as session:
        get_job(session=session, job_id=job_id, owner_id=owner_id)
        data = [
            CheckpointRead(
                step=c.step,
                created_at=c.created_at,
                metrics=c.metrics,
                download_url=f"/jobs/{job_id}/checkpoints/{c.step}/download",
                hub_commit_url=c.hub_commit_url,
            )
            for c in list_checkpoints(session=session, job_id=job_id)
        ]
        return CheckpointList(data=data)


class _Chunks:
    """A write-only file whose writes are collected, so a tar stream can be yielded as it is built."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        """Keep a chunk of the archive."""
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        """Hand over what was written since the last drain."""
        data, self.parts = b"".join(self.parts), []
        return data


def _adapter_files(directory: Path) -> list[Path]:
    return sorted({p for pattern in ADAPTER_FILE_PATTERNS for p in directory.glob(pattern) if p.is_file()})


def _tar_gz(files: list[Path], prefix: str) -> Iterator[bytes]:
    sink = _Chunks()
    with tarfile.open(fileobj=sink, mode="w|gz") as archive:  # type: ignore[call-overload]
        for path in files:
            archive.add(path, arcname=f"{prefix}/{path.name}")
            yield sink.drain()
    yield sink.drain()


def _archive_response(directory: Path, name: str) -> StreamingResponse:
    files = _adapter_files(directory)
    if not files:
        raise JobNotFound(f"no adapter files for {name}", code="not_found")
    headers = {"Content-Disposition": f'attachment; filename="{name}.tar.gz"'}
    return StreamingResponse(_tar_gz(files, name), media_type="application/gzip", headers=headers)


@router.get("/{job_id}/checkpoints/{step}/download", responses=errors(404), response_class=StreamingResponse)
def download_checkpoint(
    job_id: JobId,
    step: Annotated[int, PathParam(ge=0, le=MAX_INT32, description="The checkpoint's step.")],
    session: SessionDep,
    user: CurrentUser,
) -> StreamingResponse:
    """Download the adapter of one checkpoint as a .tar.gz archive."""
    get_job(session=session, job_id=job_id, owner_id=owner_scope(user))
    checkpoint = get_checkpoint(session=session, job_id=job_id, step=step)
    session.close()  # the download may be long: give the connection back first
    return _archive_response(Path(checkpoint.path), f"{job_id}-step-{step}")


@router.get("/{job_id}/adapter/download", responses=errors(404), response_class=StreamingResponse)
def download_adapter(job_id: JobId, session: SessionDep, user: CurrentUser) -> StreamingResponse:
    """Download the final adapter and tokenizer of a succeeded job as a .tar.gz archive."""
    job = get_job(session=session, job_id=job_id, owner_id=owner_scope(user))
    adapter = (job.result or {}).get("adapter_path")
    if not adapter:
        raise JobNotFound(f"job {job_id} has no final adapter (status {job.status.value})", param="job_id")
    session.close()  # the download may be long: give the connection back first
    return _archive_response(Path(adapter), f"{job_id}-adapter")
