"""Service settings, read from the environment (and an optional `.env`)."""

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything ftq reads from its environment; env names are given as aliases."""

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore", populate_by_name=True)

    data_dir: Path = Field(Path("~/.ftq"), validation_alias="FTQ_DATA_DIR")
    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    broker_url: str | None = Field(None, validation_alias="BROKER_URL")
    local_roots: str | None = Field(None, validation_alias="FTQ_LOCAL_ROOTS")
    queue_name: str = Field("ftq.gpu", validation_alias="FTQ_QUEUE")
    validate_queue_name: str = Field("ftq.validate", validation_alias="FTQ_VALIDATE_QUEUE")
    validate_sample_rows: int = Field(2000, ge=1, validation_alias="FTQ_VALIDATE_SAMPLE_ROWS")
    dry_run_timeout_s: float = Field(120.0, gt=0, validation_alias="FTQ_DRY_RUN_TIMEOUT")
    progress_interval_s: float = Field(1.0, ge=0.0, validation_alias="FTQ_PROGRESS_INTERVAL")
    max_attempts: int = Field(3, ge=1, le=100, validation_alias="FTQ_MAX_ATTEMPTS")
    max_upload_mb: int = Field(1024, ge=1, validation_alias="FTQ_MAX_UPLOAD_MB")
    lease_ttl_s: float = Field(120.0, gt=0, validation_alias="FTQ_LEASE_TTL")
    worker_heartbeat_s: float = Field(10.0, gt=0, validation_alias="FTQ_WORKER_HEARTBEAT")
    reconcile_interval_s: float = Field(15.0, gt=0, validation_alias="FTQ_RECONCILE_INTERVAL")
    redispatch_after_s: float = Field(300.0, gt=0, validation_alias="FTQ_REDISPATCH_AFTER")
    cancel_grace_s: float = Field(60.0, ge=0.0, validation_alias="FTQ_CANCEL_GRACE")
    # A training worker keeps one trainer process started ahead, its imports done, for the next job: while it is
    # idle, and while a job trains and another waits.
    spare_trainer: bool = Field(True, validation_alias="FTQ_SPARE_TRAINER")
    # Fernet keys (comma-separated, newest first) that encrypt users' stored tokens; default: `secret.key`
    # in the data dir, made on first use, which suits one box where API and workers share the data dir.
    secret_key: SecretStr | None = Field(None, validation_alias="FTQ_SECRET_KEY")
    rate_limit_per_minute: float = Field(600.0, gt=0, validation_alias="FTQ_RATE_LIMIT")
    rate_limit_burst: int = Field(60, ge=1, validation_alias="FTQ_RATE_BURST")
    # The polled reads trust a key checked this many seconds ago (0: check every time); writes always check.
    key_cache_ttl_s: float = Field(5.0, ge=0.0, validation_alias="FTQ_KEY_CACHE_TTL")
    # Jobs the API keeps as it last showed them (`GET /jobs/{id}`, `GET /jobs`), on PostgreSQL (0: none; see
    # `api.viewcache`).
    job_view_cache_size: int = Field(10_000, ge=0, validation_alias="FTQ_JOB_VIEW_CACHE")

    @property
    def worker_stale_s(self) -> float:
        """A worker whose row has not been refreshed for this long is offline (three missed heartbeats)."""
        return 3 * self.worker_heartbeat_s

    @property
    def data_path(self) -> Path:
        """The data directory, expanded and absolute."""
        return self.data_dir.expanduser().resolve()

    @property
    def db_url(self) -> str:
        """`DATABASE_URL`, or the embedded SQLite file in the data dir."""
        return self.database_url or f"sqlite:///{self.data_path / 'ftq.db'}"

    @property
    def broker(self) -> str:
        """`BROKER_URL`, or the embedded broker: kombu's SQLAlchemy transport on a SQLite file."""
        return self.broker_url or f"sqla+sqlite:///{self.data_path / 'broker.db'}"

    @property
    def result_backend(self) -> str:
        """Where dry-run answers travel back: Redis next to a Redis broker, else a SQLite file."""
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return f"db+sqlite:///{self.data_path / 'results.db'}"

    @property
    def uses_embedded_broker(self) -> bool:
        """True when no broker server is configured."""
        return self.broker_url is None

    @property
    def allowed_roots(self) -> list[Path]:
        """Directories under which local models and datasets may be read."""
        if self.local_roots:
            return [Path(p).expanduser().resolve() for p in self.local_roots.split(":") if p]
        return [self.data_path / "files"]

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded dataset files are kept (read by id, never by path from a spec)."""
        return self.data_path / "uploads"

    @property
    def jobs_dir(self) -> Path:
        """Where each job's outputs (adapter, tokenizer, checkpoints) are written."""
        return self.data_path / "jobs"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def apply_data_dir(data_dir: str | None) -> Settings:
    """Point this process (and the children it starts) at `data_dir`, when given; the settings read afresh."""
    # Children inherit the environment, so the data dir travels to the API and the workers this way.
    if data_dir:
        os.environ["FTQ_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    get_settings.cache_clear()
    return get_settings()
