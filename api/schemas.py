"""Response bodies of the API (the request body is `shared.spec.JobSpec` itself)."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.jobs import JobView
from shared.models import EventType, Job, JobStatus, as_utc
from shared.spec import JobSpec

UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
# Integer parameters compared with database columns must fit them (PostgreSQL refuses larger values).
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1


class Progress(BaseModel):
    """Where training stands; null fields are not known yet."""

    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    trained_tokens: int = Field(0, description="Completion tokens trained on so far (the tokens carrying loss).")
    tokens_per_second: float | None = Field(
        None, description="Tokens (prompt and completion, no padding) trained per second in this attempt."
    )
    eta_seconds: float | None = Field(None, description="Seconds left at the step rate measured in this attempt.")


class Stats(BaseModel):
    """What the worker found in the dataset after tokenizing it (validation may look at a sample only)."""

    rows: int | None = Field(None, description="Rows trained on.")
    tokens: int | None = Field(None, description="Tokens in those rows, after truncation.")
    completion_tokens: int | None = Field(None, description="Tokens that carry loss (after the template).")
    truncated_rows: int | None = Field(None, description="Rows cut at max_length.")
    dropped_rows: int | None = Field(None, description="Rows left with no completion token after truncation.")
    sampled_rows: int | None = Field(
        None, description="Set when these figures come from the first rows only (validation of a large dataset)."
    )


class Result(BaseModel):
    """What a succeeded job produced."""

    adapter_path: str | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    quantization: dict[str, Any] | None = None
    hub_commit_url: str | None = Field(None, description="Commit of the final adapter on the Hub, when pushed.")
    evaluation: dict[str, Any] | None = Field(
        None, description="Scores on the evaluation rows (and the base model's, with `baseline`); see /evaluation."
    )


class ErrorInfo(BaseModel):
    """Why a job failed: a stable code, a message, and the spec field at fault."""

    code: str
    message: str
    param: str | None = None


class JobRead(BaseModel):
    """A fine-tune job as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    object: str = "fine_tuning.job"
    status: JobStatus
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    spec: JobSpec
    progress: Progress
    stats: Stats
    result: Result
    error: ErrorInfo | None
    attempt: int
    worker: str | None = Field(None, description="The worker (e.g. `gpu0@host`) running or that last ran the job.")
    preemptions: int = Field(0, description="Times a shutting-down worker handed the job back (not failures).")
    metadata: dict[str, str]
    owner: str = Field(..., description="Name of the user who submitted the job.")
    priority: int = Field(0, description="Higher starts sooner among jobs of equal fair share (admin-set).")
    queue_position: int | None = Field(None, description="Place in line (1 = next to start) while queued.")
    wandb_url: str | None = Field(None, description="The W&B run page, once the run has started online.")
    wandb_dir: str | None = Field(None, description="The run's local directory on the worker (offline runs).")

    @classmethod
    def from_job(cls, job: Job, queue_position: int | None = None) -> "JobRead":
        """Build the API view of a job row."""
        return cls._build(job, JobSpec.model_validate(job.spec), job.owner.name, queue_position)

    @classmethod
    def from_view(cls, view: JobView, spec: JobSpec, queue_position: int | None = None) -> "JobRead":
        """Build the API view of a job from its shown columns (`shared.jobs.get_job_view`) and its validated spec."""
        return cls._build(view, spec, view.owner_name, queue_position)

    @classmethod
    def _build(cls, job: Job | JobView, spec: JobSpec, owner_name: str, queue_position: int | None) -> "JobRead":
        error = None
        if job.error_code is not None:
            error = ErrorInfo(code=job.error_code, message=job.error_message or "", param=job.error_param)
        return cls(
            id=job.id,
            status=job.status,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            spec=spec,
            progress=Progress.model_validate(job.progress or {}),
            stats=Stats.model_validate(job.stats or {}),
            result=Result.model_validate(job.result or {}),
            error=error,
            attempt=job.attempt,
            worker=job.worker,
            preemptions=job.preemptions,
            metadata=job.metadata_ or {},
            owner=owner_name,
            priority=job.priority,
            queue_position=queue_position,
            wandb_url=job.wandb_url,
            wandb_dir=job.wandb_dir,
        )


class JobPatch(BaseModel):
    """What an admin may change of a job."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(..., ge=-1000, le=1000, description="Higher starts sooner among jobs of equal fair share.")


class JobList(BaseModel):
    """One page of jobs, newest first; pass the last id as `after` for the next page."""

    object: str = "list"
    data: list[JobRead]
    has_more: bool


class EventRead(BaseModel):
    """One entry of a job's event log."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    object: str = "fine_tuning.job.event"
    created_at: UtcDatetime
    type: EventType
    level: str
    message: str
    data: dict[str, Any]


class EventList(BaseModel):
    """A page of events, oldest first; pass the last id as `after` for the next page."""

    object: str = "list"
    data: list[EventRead]
    has_more: bool


class CheckpointRead(BaseModel):
    """A complete checkpoint of a job."""

    object: str = "fine_tuning.job.checkpoint"
    step: int
    created_at: UtcDatetime
    metrics: dict[str, float | None]
    download_url: str
    hub_commit_url: str | None


class CheckpointList(BaseModel):
    """A job's checkpoints by step."""

    object: str = "list"
    data: list[CheckpointRead]
    has_more: bool = False


class DryRun(BaseModel):
    """What a job would do: its resolved spec, dataset statistics and planned optimizer steps."""

    object: str = "fine_tuning.job.dry_run"
    spec: JobSpec
    stats: Stats
    planned_steps: int
    warnings: list[str]


class FileRead(BaseModel):
    """An uploaded dataset file."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    object: str = "file"
    filename: str
    format: str
    bytes: int
    rows: int | None = Field(description="Rows counted on upload (null for Parquet, read by the worker).")
    sha256: str
    created_at: UtcDatetime


class FileList(BaseModel):
    """Uploaded files, newest first."""

    object: str = "list"
    data: list[FileRead]
    has_more: bool = False
