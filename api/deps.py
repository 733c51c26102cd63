"""Injectables for the routes: settings, a database session, and the caller's API key."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from shared.auth import find_api_key
from shared.db import get_sessionmaker
from shared.errors import FtqError
from shared.models import ApiKey
from shared.settings import Settings, get_settings

bearer = HTTPBearer(auto_error=False, description="An ftq API key: `Authorization: Bearer ftq_...`")


class Unauthorized(FtqError):
    """Missing or unknown API key."""

    status_code = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


def get_session() -> Iterator[Session]:
    """A session per request; the route commits, anything else is rolled back on close."""
    with get_sessionmaker()() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def current_key(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> ApiKey:
    """The API key of the request, or 401."""
    if credentials is None:
        raise Unauthorized("send an API key as `Authorization: Bearer <key>`", param="Authorization")
    key = find_api_key(session=session, raw=credentials.credentials)
    if key is None:
        raise Unauthorized("unknown or revoked API key", param="Authorization")
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def owner_scope(key: ApiKey) -> str | None:
    """Whose jobs and files a key may see: its own, or everyone's (None) for an admin key."""
    return None if key.is_admin else key.id
