"""API keys: random bearer tokens of which only a SHA-256 is stored."""

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ApiKey

KEY_PREFIX = "ftq_"


def hash_key(raw: str) -> str:
    """The stored form of a key (keys are 32 random bytes, so a plain hash is enough)."""
    return hashlib.sha256(raw.encode()).hexdigest()


def create_api_key(*, session: Session, name: str, is_admin: bool = False) -> tuple[ApiKey, str]:
    """Add a new key; returns the row and the raw key, which is never stored or shown again."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, prefix=raw[:10], key_hash=hash_key(raw), is_admin=is_admin)
    session.add(key)
    session.flush()
    return key, raw


def find_api_key(*, session: Session, raw: str) -> ApiKey | None:
    """The live key matching `raw`, or None."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(raw)))
    if key is None or key.revoked_at is not None:
        return None
    return key
