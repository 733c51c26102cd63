"""Injectables for the routes: settings, a database session, and the caller (key and user).

Two kinds of route, two kinds of session. The reads that scripts poll while a job runs (a job, the job list, a job's
events and checkpoints) are `async def` on an asyncio session (`AsyncSessionDep`, `AsyncCurrentUser`): they run the
same sync query code through `AsyncSession.run_sync`, on the event loop, so a poll costs no worker thread and no
thread hand-off, and never waits behind sync routes that hold their threads. The rest stay sync on `SessionDep`,
`CurrentUser` and Starlette's thread pool: they write, or wait on something blocking (the broker, a dry run, files).
"""

from collections.abc import AsyncIterator, Iterator
from functools import cache
from typing import Annotated

from fastapi import Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from api.ratelimit import TokenBucket
from shared.auth import find_api_key
from shared.db import get_async_sessionmaker, get_sessionmaker
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


async def get_async_session() -> AsyncIterator[AsyncSession]:
    """An asyncio session per request, for the read routes; it is closed (never committed) when the request ends."""
    async with get_async_sessionmaker()() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
AsyncSessionDep = Annotated[AsyncSession, Depends(get_async_session)]


@cache
def rate_limiter(rate_per_minute: float, burst: int) -> TokenBucket:
    """The process's bucket for these settings."""
    return TokenBucket(rate_per_s=rate_per_minute / 60.0, burst=burst)


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def authenticate(session: Session, credentials: HTTPAuthorizationCredentials | None, settings: Settings) -> ApiKey:
    """The live API key of `credentials` (401 if none or unknown), after spending one of its user's rate tokens."""
    if credentials is None:
        raise Unauthorized("send an API key as `Authorization: Bearer <key>`", param="Authorization")
    key = find_api_key(session=session, raw=credentials.credentials)
    if key is None:
        raise Unauthorized("unknown or revoked API key", param="Authorization")
    rate_limiter(settings.rate_limit_per_minute, settings.rate_limit_burst).take(key.user_id)
    return key


def current_key(session: SessionDep, settings: SettingsDep, credentials: Credentials) -> ApiKey:
    """The API key of the request, for sync routes."""
    return authenticate(session, credentials, settings)


async def async_current_key(session: AsyncSessionDep, credentials: Credentials) -> ApiKey:
    """The API key of the request, for async routes (loaded in their own asyncio session)."""
    return await session.run_sync(authenticate, credentials, get_settings())


CurrentKey = Annotated[ApiKey, Depends(current_key)]
AsyncCurrentKey = Annotated[ApiKey, Depends(async_current_key)]


def current_user(key: CurrentKey) -> User:
    """The user the request's key belongs to."""
    return key.user


async def async_current_user(key: AsyncCurrentKey) -> User:
    """The user the request's key belongs to, for async routes."""
    return key.user


CurrentUser = Annotated[User, Depends(current_user)]
AsyncCurrentUser = Annotated[User, Depends(async_current_user)]


def admin_user(user: CurrentUser) -> User:
    """The caller, who must be an admin (403 otherwise)."""
    if not user.is_admin:
        raise Forbidden("only an admin may do this", param="Authorization")
    return user


AdminUser = Annotated[User, Depends(admin_user)]


def owner_scope(user: User) -> str | None:
    """Whose jobs and files a user may see: their own, or everyone's (None) for an admin."""
    return None if user.is_admin else user.id
