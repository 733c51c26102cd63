"""Injectables for the routes: settings, a database session, and the caller (key and user)."""

from collections.abc import Iterator
from functools import cache
from typing import Annotated

from fastapi import Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.ratelimit import TokenBucket
from shared.auth import find_api_key
from shared.db import get_sessionmaker
from shared.errors import FtqError
from shared.models import ApiKey, User
from shared.settings import Settings, get_settings

# Ids are ours (`ftjob-...`, `file-...`); anything else cannot name a resource, so it is a 422, not a lookup.
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
JobId = Annotated[str, Path(pattern=ID_PATTERN, description="A job id, `ftjob-...`.")]
FileId = Annotated[str, Path(pattern=ID_PATTERN, description="An uploaded file's id, `file-...`.")]
UserName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.@-]{1,128}$", description="A user's name.")]

bearer = HTTPBearer(auto_error=False, description="An ftq API key: `Authorization: Bearer ftq_...`")


class Unauthorized(FtqError):
    """Missing or unknown API key."""

    status_code = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(FtqError):
    """The caller's key is valid but may not do this."""

    status_code = 403
    code = "forbidden"


def get_session() -> Iterator[Session]:
    """A session per request; the route commits, anything else is rolled back on close."""
    with get_sessionmaker()() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


@cache
def rate_limiter(rate_per_minute: float, burst: int) -> TokenBucket:
    """The process's bucket for these settings."""
    return TokenBucket(rate_per_s=rate_per_minute / 60.0, burst=burst)


def current_key(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    """The API key of the request (401 if none or unknown), after spending one of its user's rate tokens."""
    if credentials is None:
        raise Unauthorized("send an API key as `Authorization: Bearer <key>`", param="Authorization")
    key = find_api_key(session=session, raw=credentials.credentials)
    if key is None:
        raise Unauthorized("unknown or revoked API key", param="Authorization")
    rate_limiter(settings.rate_limit_per_minute, settings.rate_limit_burst).take(key.user_id)
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def current_user(key: CurrentKey) -> User:
    """The user the request's key belongs to."""
    return key.user


CurrentUser = Annotated[User, Depends(current_user)]


def admin_user(user: CurrentUser) -> User:
    """The caller, who must be an admin (403 otherwise)."""
    if not user.is_admin:
        raise Forbidden("only an admin may do this", param="Authorization")
    return user


AdminUser = Annotated[User, Depends(admin_user)]


def owner_scope(user: User) -> str | None:
    """Whose jobs and files a user may see: their own, or everyone's (None) for an admin."""
    return None if user.is_admin else user.id
