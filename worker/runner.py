"""The training process: `python -m worker.runner JOB_ID ATTEMPT`, started fresh for each job by the task.

A fresh process per job frees all GPU memory when it exits and keeps torch out of the Celery worker.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Any

from shared.db import session_scope
from shared.errors import FtqError, JobFailure
from shared.jobs import (
    fail_job,
    finish_cancel,
    get_job,
    record_checkpoint,
    record_hub_commit,
    record_hub_failure,
    record_log,
    record_metrics,
    record_progress,
    record_stats,
    record_wandb,
    succeed_job,
)
from shared.settings import get_settings
from shared.spec import JobSpec

log = logging.getLogger("ftq.runner")


class JobReporter:
    """Writes stats and progress to the job row in short transactions, fenced by the attempt."""

    def __init__(self, job_id: str, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt

    def stats(self, stats: Any) -> bool:
        """Store the dataset statistics."""
        with session_scope() as session:
            ok = record_stats(session=session, job_id=self.job_id, attempt=self.attempt, stats=stats.as_dict())
            session.commit()
        return ok

    def progress(self, progress: dict[str, Any]) -> bool:
        """Store the latest progress; False when training must stop."""
        with session_scope() as session:
            ok = record_progress(session=session, job_id=self.job_id, attempt=self.attempt, progress=progress)
            session.commit()
        return ok

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Append the logged metrics as a `progress` event."""
        with session_scope() as session:
            record_metrics(session=session, job_id=self.job_id, attempt=self.attempt, step=step, metrics=metrics)
            session.commit()

    def log(self, message: str, data: dict[str, Any]) -> None:
        """Append a `log` event."""
        with session_scope() as session:
            record_log(session=session, job_id=self.job_id, attempt=self.attempt, message=message, data=data)
            session.commit()

    def wandb(self, run_id: str, url: str | None, directory: str, mode: str) -> None:
        """Record where the W&B run lives."""
        with session_scope() as session:
            record_wandb(
                session=session,
                job_id=self.job_id,
                attempt=self.attempt,
                run_id=run_id,
                url=url,
                directory=directory,
                mode=mode,
            )
            session.commit()

    def hub_commit(self, step: int | None, url: str) -> None:
        """Record a landed Hub commit (on its checkpoint, or the final one) with a `hub` event."""
        with session_scope() as session:
            record_hub_commit(session=session, job_id=self.job_id, step=step, url=url)
            session.commit()

    def hub_failed(self, step: int | None, message: str) -> None:
        """Record a failed Hub push as a warning."""
        with session_scope() as session:
            record_hub_failure(session=session, job_id=self.job_id, step=step, message=message)
            session.commit()

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        """Record a complete checkpoint."""
        with session_scope() as session:
            record_checkpoint(
                session=session, job_id=self.job_id, attempt=self.attempt, step=step, path=str(path), metrics=metrics
            )
            session.commit()


def classify(exc: BaseException) -> FtqError:
    """Turn an unexpected exception into the job's error."""
    if isinstance(exc, FtqError):
        return exc
    name = type(exc).__name__
    if "OutOfMemoryError" in name:
        return JobFailure(f"out of memory: {exc}", code="out_of_memory", param="hyperparameters.batch_size")
    return JobFailure(f"{name}: {exc}", code="training_error")


def run(job_id: str, attempt: int) -> int:
    """Train one attempt of a job and record how it ended; the exit code is 0 when the outcome is recorded."""
    from worker.training import train  # heavy imports only after the job is known to exist

    settings = get_settings()
    with session_scope() as session:
        spec = JobSpec.model_validate(get_job(session=session, job_id=job_id).spec)
    reporter = JobReporter(job_id, attempt)
    job_dir = settings.jobs_dir / job_id
    try:
        outcome = train(
            spec,
            job_dir,
            settings.allowed_roots,
            reporter,
            job_id=job_id,
            interval_s=settings.progress_interval_s,
        )
    except Exception as exc:
        error = classify(exc)
        log.exception("job %s attempt %s failed: %s", job_id, attempt, error.code)
        with session_scope() as session:
            fail_job(session=session, job_id=job_id, attempt=attempt, error=error)
            session.commit()
        return 0
    with session_scope() as session:
        if outcome.stopped:
            stored = finish_cancel(session=session, job_id=job_id, attempt=attempt)
        else:
            stored = succeed_job(
                session=session, job_id=job_id, attempt=attempt, result=outcome.result, progress=outcome.progress
            )
        session.commit()
    ending = "stopped" if outcome.stopped else "finished"
    log.info("job %s attempt %s %s (%s)", job_id, attempt, ending, "recorded" if stored else "fenced off")
    return 0


def main() -> None:
    """Entry point of the training process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job_id, attempt = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(run(job_id, attempt))


if __name__ == "__main__":
    main()
