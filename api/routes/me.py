"""The caller: who they are, and their stored tokens."""

from fastapi import APIRouter

from api.deps import CurrentKey, SessionDep, SettingsDep
from api.errors_doc import COMMON, errors
from api.schemas_team import KeyRead, MeRead, SecretsRead, SecretState, SecretsUpdate
from shared.limits import user_limits
from shared.users import usage
from shared.vault import SECRET_NAMES, delete_secret, secrets_set, store_secret

router = APIRouter(prefix="/me", tags=["me"], responses=errors(*COMMON))


def _secrets_read(session: SessionDep, user_id: str) -> SecretsRead:
    stored = secrets_set(session=session, user_id=user_id)
    states = {name: SecretState(set=name in stored, updated_at=stored.get(name)) for name in SECRET_NAMES}
    return SecretsRead(**states)


@router.get("", response_model=MeRead)
def read_me(session: SessionDep, key: CurrentKey) -> MeRead:
    """Who the API key belongs to: name, admin flag, priority, limits, job counts and which tokens are set."""
    user = key.user
    return MeRead(
        id=user.id,
        name=user.name,
        is_admin=user.is_admin,
        priority=user.priority,
        limits=user_limits(user),
        created_at=user.created_at,
        jobs=usage(session=session, user_id=user.id),
        secrets=_secrets_read(session, user.id),
        key=KeyRead(id=key.id, name=key.name, prefix=key.prefix, created_at=key.created_at),
    )


@router.get("/secrets", response_model=SecretsRead)
def read_my_secrets(session: SessionDep, key: CurrentKey) -> SecretsRead:
    """Which of your tokens are stored (never their values)."""
    return _secrets_read(session, key.user_id)


@router.put("/secrets", response_model=SecretsRead)
def update_my_secrets(body: SecretsUpdate, session: SessionDep, settings: SettingsDep, key: CurrentKey) -> SecretsRead:
    """Store your Hugging Face and W&B tokens, encrypted; your jobs use them instead of the team's defaults."""
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None:
            delete_secret(session=session, user_id=key.user_id, name=name)
        else:
            store_secret(
                session=session, settings=settings, user_id=key.user_id, name=name, value=value.get_secret_value()
            )
    session.commit()
    return _secrets_read(session, key.user_id)
