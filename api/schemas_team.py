"""Bodies of the team routes: the caller (`/me`), their stored tokens, users (admin) and workers."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from api.schemas import UtcDatetime
from shared.limits import UserLimits

Token = SecretStr  # never echoed: pydantic shows it as '**********' in reprs and errors


class SecretState(BaseModel):
    """Whether a token is stored; its value is never returned."""

    set: bool
    updated_at: UtcDatetime | None = None


class SecretsRead(BaseModel):
    """Which of the caller's tokens are stored. A job uses its owner's, else the team's default."""

    hf_token: SecretState
    wandb_api_key: SecretState


class SecretsUpdate(BaseModel):
    """Tokens to store (encrypted at rest); a field sent as null deletes that token, one left out stays."""

    model_config = ConfigDict(extra="forbid")

    hf_token: Token | None = Field(None, min_length=1, max_length=4096, description="A Hugging Face token.")
    wandb_api_key: Token | None = Field(None, min_length=1, max_length=4096, description="A W&B API key.")


class KeyRead(BaseModel):
    """The key a request was made with (its prefix, never the key)."""

    id: str
    name: str
    prefix: str
    created_at: UtcDatetime


class UserRead(BaseModel):
    """A user: admin flag, priority and limits."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    is_admin: bool
    priority: int
    limits: UserLimits
    created_at: UtcDatetime


class MeRead(UserRead):
    """The caller: who they are, their limits, how many jobs they have in each status, and their tokens."""

    jobs: dict[str, int] = Field(..., description="Jobs by status (only statuses with any).")
    secrets: SecretsRead
    key: KeyRead


class UserList(BaseModel):
    """Every user (admins only)."""

    object: str = "list"
    data: list[UserRead]


class UserPatch(BaseModel):
    """What an admin may change of a user; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    is_admin: bool | None = None
    priority: int | None = Field(None, ge=-1000, le=1000, description="Priority of the user's new jobs.")
    limits: UserLimits | None = Field(None, description="Replaces every limit; a cap left out is lifted.")


class CurrentJob(BaseModel):
    """The job a worker is training (its id only when the caller may see it)."""

    id: str | None
    step: int | None
    total_steps: int | None


class WorkerRead(BaseModel):
    """A worker as it last reported itself."""

    name: str
    kind: Literal["gpu", "validate"]
    hostname: str
    gpu: str | None = Field(None, description="The GPU it is pinned to (its CUDA_VISIBLE_DEVICES).")
    gpu_name: str | None
    pid: int
    state: Literal["online", "offline", "stopped"]
    started_at: UtcDatetime
    heartbeat_at: UtcDatetime
    current_job: CurrentJob | None


class WorkerList(BaseModel):
    """Every worker seen, GPU workers first."""

    object: str = "list"
    data: list[WorkerRead]
