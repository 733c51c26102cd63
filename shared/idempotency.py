"""`Idempotency-Key` on job creation: a retried request returns the job the first one created.

A key is scoped to its API key and kept `KEEP` (24 h). The same key with another body is refused; while the
first request is still being handled the key is "in flight" and a retry gets 409. A request that died in flight
releases its key after `ABANDONED`.
"""

import hashlib
import json
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import FtqError, InvalidInput
from shared.models import IdempotencyKey, utcnow

KEEP = timedelta(hours=24)
ABANDONED = timedelta(minutes=2)
HEADER = "Idempotency-Key"


class RequestInFlight(FtqError):
    """The first request with this key is still being handled."""

    status_code = 409
    code = "request_in_progress"


def request_hash(body: dict[str, Any]) -> str:
    """A fingerprint of a request body (key order does not matter)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _stale(record: IdempotencyKey) -> bool:
    created = record.created_at
    created = created.astimezone(UTC) if created.tzinfo else created.replace(tzinfo=UTC)  # SQLite: naive UTC
    age = utcnow() - created
    return age > KEEP or (record.job_id is None and age > ABANDONED)


def reserve_key(*, session: Session, owner_id: str, key: str, fingerprint: str) -> str | None:
    """Reserve `key` for a new request, or return the job id an earlier request created.

    Unlike other operations here it commits: a reservation must be visible to concurrent requests at once.

    Raises 422 when the key was used for another body, 409 while its first request is in flight.
    """
    for _ in range(2):
        session.add(IdempotencyKey(owner_id=owner_id, key=key, request_hash=fingerprint))
        try:
            session.commit()
            return None
        except IntegrityError:
            session.rollback()
        existing = session.get(IdempotencyKey, (owner_id, key), populate_existing=True)
        if existing is None:
            continue  # expired and removed meanwhile: try again
        if _stale(existing):
            session.execute(
                delete(IdempotencyKey).where(IdempotencyKey.owner_id == owner_id, IdempotencyKey.key == key)
            )
            session.commit()
            continue
        if existing.request_hash != fingerprint:
            raise InvalidInput(
                f"{HEADER} {key!r} was already used with a different request body",
                code="idempotency_key_reused",
                param=HEADER,
            )
        if existing.job_id is None:
            raise RequestInFlight(f"a request with {HEADER} {key!r} is still being handled", param=HEADER)
        return existing.job_id
    raise RequestInFlight(f"a request with {HEADER} {key!r} is still being handled", param=HEADER)


def complete_key(*, session: Session, owner_id: str, key: str, job_id: str) -> None:
    """Bind a reserved key to the job its request created (in the job's transaction)."""
    record = session.get(IdempotencyKey, (owner_id, key))
    if record is not None:
        record.job_id = job_id
        session.flush()


def release_key(*, session: Session, owner_id: str, key: str) -> None:
    """Free a reserved key whose request failed before creating a job, so a retry can use it."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.owner_id == owner_id, IdempotencyKey.key == key))


def purge_expired_keys(*, session: Session) -> int:
    """Delete keys older than `KEEP`; returns how many."""
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - KEEP))
    return int(result.rowcount)  # type: ignore[attr-defined]
