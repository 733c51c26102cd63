"""API keys: random bearer tokens of which only a SHA-256 is stored; each belongs to a user."""

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, or_, select
from sqlalchemy.orm import Session

from shared.errors import FtqError
from shared.models import ApiKey, User, utcnow
from shared.users import get_or_create_user

KEY_PREFIX = "ftq_"
# Built once: every authenticated request runs it, and building the comparison costs more than the lookup itself.
KEY_BY_HASH = select(ApiKey).where(ApiKey.key_hash == bindparam("key_hash"))
OWNER_BY_HASH = (
    select(User.id, User.is_admin)
    .join(ApiKey, ApiKey.user_id == User.id)
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
)


@dataclass(frozen=True)
class KeyOwner:
    """The user a live key belongs to, as much of them as the read routes need: whose jobs they may see."""

    id: str
    is_admin: bool


class KeyNotFound(FtqError):
    """No key with that id or prefix."""

    status_code = 404
    code = "not_found"


def hash_key(raw: str) -> str:
    """The stored form of a key (keys are 32 random bytes, so a plain hash is enough)."""
    return hashlib.sha256(raw.encode()).hexdigest()


def create_api_key(*, session: Session, name: str, is_admin: bool = False) -> tuple[ApiKey, str]:
    """A new key for the user `name` (made if new); returns the row and the raw key, never stored or shown again."""
    user = get_or_create_user(session=session, name=name, is_admin=is_admin)
    return add_key(session=session, user=user, name=name)


def add_key(*, session: Session, user: User, name: str) -> tuple[ApiKey, str]:
    """Add a new key for `user`; returns the row and the raw key."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(user=user, name=name, prefix=raw[:10], key_hash=hash_key(raw))
    session.add(key)
    session.flush()
    return key, raw


def find_api_key(*, session: Session, raw: str) -> ApiKey | None:
    """The live key matching `raw` (with its user), or None."""
    key = session.scalar(KEY_BY_HASH, {"key_hash": hash_key(raw)})
    if key is None or key.revoked_at is not None:
        return None
    return key


def find_key_owner(connection: Connection, key_hash: str) -> KeyOwner | None:
    """The user of the live key with this hash (see `hash_key`), or None; one query, no ORM objects."""
    row = connection.execute(OWNER_BY_HASH, {"key_hash": key_hash}).one_or_none()
    return None if row is None else KeyOwner(id=row.id, is_admin=row.is_admin)


def list_api_keys(*, session: Session) -> list[ApiKey]:
    """Every key, oldest first, with its user."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_api_key(*, session: Session, ref: str) -> ApiKey:
    """Revoke the key with this id or prefix (the first characters of the key, shown by `ftq keys list`)."""
    matches = list(session.scalars(select(ApiKey).where(or_(ApiKey.id == ref, ApiKey.prefix == ref))))
    if len(matches) != 1:
        why = "no key" if not matches else f"{len(matches)} keys"
        raise KeyNotFound(f"{why} with id or prefix {ref!r}", param="key")
    key = matches[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key
