"""Uploaded dataset files: checked on the way in, stored under the data dir, named by id in specs."""

import csv
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import FtqError, InvalidInput, JobNotFound
from shared.models import Job, JobStatus, UploadedFile, new_id
from shared.spec import is_file_id

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
CHUNK = 1 << 20


class FileTooLarge(FtqError):
    """The upload is over the size limit."""

    status_code = 413
    code = "file_too_large"


class FileInUse(FtqError):
    """A job that has not ended still reads this file."""

    status_code = 409
    code = "file_in_use"


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_file", param="file")


def count_rows(path: Path, fmt: str) -> int | None:
    """Check a file's format and count its rows (None when the format's row count is not cheap to read)."""
    if fmt == "jsonl":
        rows = 0
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise _invalid(f"line {number} is not valid JSON: {exc}") from exc
                if not isinstance(row, dict):
                    raise _invalid(f"line {number} is not a JSON object")
                rows += 1
        return rows
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8", errors="strict") as handle:
            try:
                reader = csv.reader(handle)
                if not next(reader, None):
                    raise _invalid("the CSV file has no header row")
                return sum(1 for _ in reader)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise _invalid(f"not a readable UTF-8 CSV file: {exc}") from exc
    with path.open("rb") as handle:
        head = handle.read(4)
        handle.seek(max(path.stat().st_size - 4, 0))
        if head != b"PAR1" or handle.read(4) != b"PAR1" or path.stat().st_size < 12:
            raise _invalid("not a Parquet file (no PAR1 magic at both ends)")
    return None


def _copy_limited(source: BinaryIO, target: Path, limit: int) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise FileTooLarge(f"the file is over the {limit // (1 << 20)} MB limit", param="file")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def store_upload(
    *, session: Session, owner_id: str, filename: str, source: BinaryIO, uploads_dir: Path, max_bytes: int
) -> UploadedFile:
    """Check and store an upload; nothing is left behind when it is refused."""
    fmt = FORMATS.get(Path(filename).suffix.lower())
    if fmt is None:
        raise InvalidInput(
            f"{filename!r}: upload a .jsonl, .csv or .parquet file", code="unsupported_format", param="file"
        )
    uploads_dir.mkdir(parents=True, exist_ok=True)
    partial = uploads_dir / f".partial-{uuid.uuid4().hex}"
    try:
        size, sha256 = _copy_limited(source, partial, max_bytes)
        rows = count_rows(partial, fmt)
        file_id = new_id("file")
        final = uploads_dir / f"{file_id}{Path(filename).suffix.lower()}"
        record = UploadedFile(
            id=file_id,
            owner_id=owner_id,
            filename=Path(filename).name[:255],
            format=fmt,
            bytes=size,
            rows=rows,
            sha256=sha256,
            path=str(final),
        )
        session.add(record)
        session.flush()
        os.replace(partial, final)
        return record
    finally:
        partial.unlink(missing_ok=True)


def get_file(*, session: Session, file_id: str, owner_id: str | None = None) -> UploadedFile:
    """The uploaded file with this id (of this owner, when given), or 404."""
    record = session.get(UploadedFile, file_id)
    if record is None or (owner_id is not None and record.owner_id != owner_id):
        raise JobNotFound(f"no file {file_id!r}", param="file_id")
    return record


def list_files(*, session: Session, owner_id: str | None = None) -> list[UploadedFile]:
    """Uploaded files (of one owner, when given), newest first."""
    query = select(UploadedFile).order_by(UploadedFile.created_at.desc(), UploadedFile.id)
    if owner_id is not None:
        query = query.where(UploadedFile.owner_id == owner_id)
    return list(session.scalars(query))


def delete_file(*, session: Session, file_id: str, owner_id: str | None = None) -> Path:
    """Delete the row of an upload no unfinished job reads; returns the path to unlink once committed."""
    record = get_file(session=session, file_id=file_id, owner_id=owner_id)
    live = (JobStatus.validating, JobStatus.queued, JobStatus.running, JobStatus.cancelling)
    for spec in session.scalars(select(Job.spec).where(Job.status.in_(live))):
        if spec["dataset"]["id"] == file_id:
            raise FileInUse(f"file {file_id} is the dataset of a job that has not ended", param="file_id")
    session.delete(record)
    session.flush()
    return Path(record.path)


def check_dataset_file(
    *, session: Session, ref: str, owner_id: str | None = None, param: str = "dataset.id"
) -> UploadedFile | None:
    """The uploaded file a spec names, which must exist (and be readable by the caller); None for other refs."""
    if not is_file_id(ref):
        return None
    record = session.get(UploadedFile, ref)
    if record is None or (owner_id is not None and record.owner_id != owner_id):
        raise InvalidInput(f"no uploaded file {ref!r}", code="file_not_found", param=param)
    return record


def uploaded_file_path(*, session: Session, file_id: str, param: str = "dataset.id") -> Path:
    """Where an uploaded file's bytes are (a deleted file fails the job on `param`)."""
    record = session.get(UploadedFile, file_id)
    if record is None:
        raise InvalidInput(f"uploaded file {file_id} no longer exists", code="dataset_not_found", param=param)
    return Path(record.path)
