"""Injectables for the routes: settings, a database session, and the caller (key and user).

Two kinds of route. The reads that scripts poll while a job runs (a job, the job list, a job's events and
checkpoints) are `async def`: they run sync query code on a connection of the asyncio engine (`shared.db.run_read`),
on the event loop, so a poll costs no worker thread and no thread hand-off and never waits behind sync routes that
hold their threads, and they know their caller from a recently checked key (`AsyncCurrentUser`, `api.keycache`).
The rest stay sync on `SessionDep`, `CurrentUser` and Starlette's thread pool: they write, or wait on something
blocking (the broker, a dry run, files), and check the key on every request.
"""

from collections.abc import Iterator
from functools import cache
from typing import Annotated

from fastapi import Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.keycache import KeyCache
from api.ratelimit import TokenBucket
from api.speccache import SpecCache
from api.viewcache import JobViewCache
from shared.auth import KeyOwner, find_api_key, find_key_owner, hash_key
from shared.db import get_sessionmaker, run_read
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


@cache
def key_cache(database_url: str, ttl_s: float) -> KeyCache:  # noqa: ARG001 (a cache per database: see below)
    """The process's cache of checked keys for this database (a key checked in one says nothing of another)."""
    return KeyCache(ttl_s=ttl_s)


@cache
def spec_cache(database_url: str) -> SpecCache:  # noqa: ARG001 (a cache per database, as `key_cache`)
    """The process's cache of validated job specs for this database."""
    return SpecCache()


@cache
def job_view_cache(database_url: str, max_entries: int) -> JobViewCache:  # noqa: ARG001 (as `key_cache`)
    """The process's cache of shown jobs for this database (`api.viewcache`; live once its listener runs)."""
    return JobViewCache(max_entries=max_entries)


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _raw_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        raise Unauthorized("send an API key as `Authorization: Bearer <key>`", param="Authorization")
    return credentials.credentials


def authenticate(session: Session, credentials: HTTPAuthorizationCredentials | None, settings: Settings) -> ApiKey:
    """The live API key of `credentials` (401 if none or unknown), after spending one of its user's rate tokens."""
    key = find_api_key(session=session, raw=_raw_key(credentials))
    if key is None:
        raise Unauthorized("unknown or revoked API key", param="Authorization")
    rate_limiter(settings.rate_limit_per_minute, settings.rate_limit_burst).take(key.user_id)
    return key


def current_key(session: SessionDep, settings: SettingsDep, credentials: Credentials) -> ApiKey:
    """The API key of the request, for sync routes."""
    return authenticate(session, credentials, settings)


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def current_user(key: CurrentKey) -> User:
    """The user the request's key belongs to."""
    return key.user


async def async_current_user(credentials: Credentials) -> KeyOwner:
    """Whom the request's key belongs to, for the async read routes: as checked within the last
    `FTQ_KEY_CACHE_TTL` seconds (see `api.keycache`), after spending one of their rate tokens."""
    settings = get_settings()  # called, not a dependency: a sync dependency would cost a thread hop
    key_hash = hash_key(_raw_key(credentials))
    cache = key_cache(settings.db_url, settings.key_cache_ttl_s)
    owner = cache.get(key_hash)
    if owner is None:
        owner = await run_read(find_key_owner, key_hash)
        if owner is None:
            raise Unauthorized("unknown or revoked API key", param="Authorization")
        cache.put(key_hash, owner)
    rate_limiter(settings.rate_limit_per_minute, settings.rate_limit_burst).take(owner.id)
    return owner


CurrentUser = Annotated[User, Depends(current_user)]
AsyncCurrentUser = Annotated[KeyOwner, Depends(async_current_user)]


def admin_user(user: CurrentUser) -> User:
    """The caller, who must be an admin (403 otherwise)."""
    if not user.is_admin:
        raise Forbidden("only an admin may do this", param="Authorization")
    return user


AdminUser = Annotated[User, Depends(admin_user)]


def owner_scope(user: User | KeyOwner) -> str | None:
    """Whose jobs and files a user may see: their own, or everyone's (None) for an admin."""
    return None if user.is_admin else user.id
