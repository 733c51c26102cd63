"""Dataset files: upload (format checked on the way in), list, read, delete."""

from typing import Annotated

from fastapi import APIRouter, File, Header, UploadFile, status

from api.deps import CurrentUser, FileId, SessionDep, SettingsDep, owner_scope
from api.errors_doc import COMMON, errors
from api.schemas import FileList, FileRead
from shared.files import FileTooLarge, delete_file, get_file, list_files, store_upload

router = APIRouter(prefix="/files", tags=["files"], responses=errors(*COMMON))


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(413), response_model=FileRead)
def upload_file(
    file: Annotated[UploadFile, File(description="A .jsonl, .csv or .parquet dataset.")],
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    content_length: Annotated[int | None, Header()] = None,
) -> FileRead:
    """Upload a dataset file; use its id as `dataset.id` in a job spec."""
    limit = settings.max_upload_mb << 20
    if content_length is not None and content_length > limit + (1 << 20):  # form framing is small
        raise FileTooLarge(f"the file is over the {settings.max_upload_mb} MB limit", param="file")
    record = store_upload(
        session=session,
        owner_id=user.id,
        filename=file.filename or "upload",
        source=file.file,
        uploads_dir=settings.uploads_dir,
        max_bytes=limit,
    )
    session.commit()
    return FileRead.model_validate(record)


@router.get("", response_model=FileList)
def list_uploaded_files(session: SessionDep, user: CurrentUser) -> FileList:
    """List uploaded files, newest first."""
    return FileList(data=[FileRead.model_validate(f) for f in list_files(session=session, owner_id=owner_scope(user))])


@router.get("/{file_id}", responses=errors(404), response_model=FileRead)
def read_uploaded_file(file_id: FileId, session: SessionDep, user: CurrentUser) -> FileRead:
    """Get one uploaded file's metadata."""
    return FileRead.model_validate(get_file(session=session, file_id=file_id, owner_id=owner_scope(user)))


@router.delete("/{file_id}", responses=errors(404), status_code=status.HTTP_204_NO_CONTENT)
def delete_uploaded_file(file_id: FileId, session: SessionDep, user: CurrentUser) -> None:
    """Delete a file no unfinished job reads (409 otherwise)."""
    path = delete_file(session=session, file_id=file_id, owner_id=owner_scope(user))
    session.commit()
    path.unlink(missing_ok=True)
