"""Per-user caps an admin sets: on how many jobs wait and run, and on how big one job may be.

A request over a cap is a 422 `limit_exceeded` naming the cap; `max_running` is enforced by the scheduler
(the user's further jobs wait), not at submission.
"""

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.errors import FtqError
from shared.models import Job, JobStatus, User
from shared.spec import JobSpec

WAITING = (JobStatus.validating, JobStatus.queued)


class UserLimits(BaseModel):
    """A user's caps; null (or absent) means no cap."""

    model_config = ConfigDict(extra="forbid")

    max_queued: int | None = Field(None, ge=0, le=1_000_000, description="Jobs waiting (validating or queued) at once.")
    max_running: int | None = Field(None, ge=0, le=10_000, description="Jobs training at once.")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="`hyperparameters.max_steps` of one job.")
    max_epochs: float | None = Field(None, gt=0, le=100, description="`hyperparameters.epochs` of one job.")
    max_length: int | None = Field(None, ge=8, le=131_072, description="`hyperparameters.max_length` of one job.")
    max_rows: int | None = Field(None, ge=1, le=1_000_000_000, description="Training rows of one job.")


class LimitExceeded(FtqError):
    """A request over one of the caller's limits."""

    status_code = 422
    code = "limit_exceeded"

    def __init__(self, limit: str, allowed: float, asked: float, message: str, *, param: str | None) -> None:
        super().__init__(f"{message} is over your limit {limit}={allowed:g} (asked: {asked:g})", param=param)
        self.limit = limit

    def as_dict(self) -> dict[str, str | None]:
        """The `error` object, naming the limit."""
        return {**super().as_dict(), "limit": self.limit}


def user_limits(user: User) -> UserLimits:
    """The caps stored on a user."""
    return UserLimits.model_validate(user.limits or {})


def check_spec_limits(limits: UserLimits, spec: JobSpec) -> None:
    """Refuse a spec bigger than the caps allow (its steps, epochs, length or declared rows)."""
    hp = spec.hyperparameters
    field, dataset = spec.main_dataset()
    checks: list[tuple[str, float | None, float | None, str]] = [
        ("max_rows", limits.max_rows, dataset.max_rows, f"{field}.max_rows")
    ]
    if spec.kind == "fine_tune":  # an evaluation job trains nothing: the training caps do not apply to it
        checks += [
            ("max_steps", limits.max_steps, hp.max_steps, "hyperparameters.max_steps"),
            ("max_epochs", limits.max_epochs, None if hp.max_steps else hp.epochs, "hyperparameters.epochs"),
            ("max_length", limits.max_length, hp.max_length, "hyperparameters.max_length"),
        ]
    for name, allowed, asked, param in checks:
        if allowed is not None and asked is not None and asked > allowed:
            raise LimitExceeded(name, allowed, asked, f"{param}={asked:g}", param=param)


def _check_rows(limits: UserLimits, rows: int, field: str) -> None:
    if limits.max_rows is not None and rows > limits.max_rows:
        message = f"a dataset of {rows} rows (set {field}.max_rows to use fewer)"
        raise LimitExceeded("max_rows", limits.max_rows, rows, message, param=f"{field}.max_rows")


def check_rows_limit(limits: UserLimits, spec: JobSpec, rows: int) -> None:
    """Refuse a dataset of `rows` rows (of which the spec may take fewer) over the `max_rows` cap."""
    field, dataset = spec.main_dataset()
    _check_rows(limits, min(rows, dataset.max_rows or rows), field)


def check_planned_limits(limits: UserLimits, spec: JobSpec, *, rows: int, planned_steps: int) -> None:
    """Refuse what only the data tells: more rows, or (by epochs) more steps, than the caps allow."""
    _check_rows(limits, rows, spec.main_dataset()[0])
    if spec.kind == "fine_tune" and limits.max_steps is not None and planned_steps > limits.max_steps:
        message = f"{planned_steps} planned steps (set hyperparameters.max_steps)"
        raise LimitExceeded("max_steps", limits.max_steps, planned_steps, message, param="hyperparameters.max_steps")


def check_queue_limit(session: Session, user: User, limits: UserLimits) -> None:
    """Refuse one more waiting job when the user already has `max_queued` waiting."""
    if limits.max_queued is None:
        return
    # Lock the user's row (PostgreSQL) so two requests at once cannot both take the last place.
    session.execute(select(User.id).where(User.id == user.id).with_for_update())
    waiting = session.scalar(
        select(func.count()).select_from(Job).where(Job.owner_id == user.id, Job.status.in_(WAITING))
    )
    if int(waiting or 0) >= limits.max_queued:
        raise LimitExceeded("max_queued", limits.max_queued, int(waiting or 0) + 1, "one more waiting job", param=None)
