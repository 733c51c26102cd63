"""Users: who owns jobs, files, keys and tokens, with their admin flag, priority and limits."""

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.errors import FtqError, InvalidInput
from shared.limits import UserLimits
from shared.models import Job, JobStatus, User


class UserNotFound(FtqError):
    """No user with that name."""

    status_code = 404
    code = "not_found"


USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


def get_or_create_user(*, session: Session, name: str, is_admin: bool = False) -> User:
    """The user called `name`, made if new; `is_admin=True` also makes an existing user an admin."""
    if not USER_NAME.match(name):
        raise InvalidInput(f"a user name is 1-128 letters, digits and _.@- (got {name!r})", param="name")
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name, is_admin=is_admin, limits={})
        session.add(user)
    elif is_admin:
        user.is_admin = True
    session.flush()
    return user


def get_user(*, session: Session, user_id: str) -> User:
    """The user with this id, or 404."""
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound(f"no user {user_id!r}", param="user_id")
    return user


def get_user_by_name(*, session: Session, name: str) -> User:
    """The user called `name`, or 404."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserNotFound(f"no user {name!r}", param="name")
    return user


def list_users(*, session: Session) -> list[User]:
    """Every user, by name."""
    return list(session.scalars(select(User).order_by(User.name)))


def update_user(
    *,
    session: Session,
    user: User,
    is_admin: bool | None = None,
    priority: int | None = None,
    limits: UserLimits | None = None,
) -> User:
    """Change what an admin may change of a user; None leaves a field as it is."""
    if is_admin is not None:
        user.is_admin = is_admin
    if priority is not None:
        user.priority = priority
    if limits is not None:
        user.limits = limits.model_dump(exclude_none=True)
    session.flush()
    return user


def usage(*, session: Session, user_id: str) -> dict[str, Any]:
    """How many of a user's jobs are in each status (the ones with any)."""
    rows = session.execute(select(Job.status, func.count()).where(Job.owner_id == user_id).group_by(Job.status)).all()
    return {JobStatus(status).value: int(n) for status, n in rows}
