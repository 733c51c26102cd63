"""Users, for admins: list them, and set their admin flag, priority and limits."""

from fastapi import APIRouter

from api.deps import AdminUser, SessionDep, UserName
from api.errors_doc import COMMON, errors
from api.schemas_team import UserList, UserPatch, UserRead
from shared.users import get_user_by_name, list_users, update_user

router = APIRouter(prefix="/users", tags=["users"], responses=errors(*COMMON))


@router.get("", response_model=UserList, responses=errors(403))
def list_all_users(session: SessionDep, _admin: AdminUser) -> UserList:
    """Every user with their priority and limits (admins only)."""
    return UserList(data=[UserRead.model_validate(user) for user in list_users(session=session)])


@router.patch("/{name}", responses=errors(403, 404), response_model=UserRead)
def update_one_user(name: UserName, patch: UserPatch, session: SessionDep, _admin: AdminUser) -> UserRead:
    """Change a user's admin flag, priority (of jobs they submit from now on) or limits (admins only)."""
    user = get_user_by_name(session=session, name=name)
    update_user(session=session, user=user, is_admin=patch.is_admin, priority=patch.priority, limits=patch.limits)
    session.commit()
    return UserRead.model_validate(user)
