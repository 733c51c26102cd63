"""The training process: `python -m worker.runner JOB_ID ATTEMPT`, started fresh for each job by the task.

A fresh process per job frees all GPU memory when it exits and keeps torch out of the Celery worker. A spare
(`python -m worker.runner --spare`) is the same process started ahead, once a job waits behind the one training:
it imports the training stack (seconds), then takes one job from its standard input; it has touched no GPU and no job
before that.
"""

import logging
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import setproctitle
from sqlalchemy.exc import OperationalError

from shared.attempts import (
    CONTINUE,
    fail_job,
    finish_cancel,
    record_checkpoint,
    record_hub_commit,
    record_hub_failure,
    record_log,
    record_metrics,
    record_progress,
    record_stats,
    record_wandb,
    requeue_drained,
    succeed_job,
)
from shared.db import session_scope
from shared.jobs import get_job
from shared.queue import enqueue_job
from shared.settings import get_settings
from shared.spec import JobSpec
from worker.credentials import credentials_for
from worker.errors import classify, is_out_of_memory
from worker.exit_codes import EXIT_OUT_OF_MEMORY, EXIT_PEER_LOST, EXIT_RANK_FAILED, EXIT_TEMPFAIL
from worker.ranks import is_main_rank, lost_a_peer

log = logging.getLogger("ftq.runner")
T = TypeVar("T")


RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)


def write(operation: Callable[..., T], **kwargs: Any) -> T:
    """Run one job operation in its own short transaction, retrying while the database is unreachable."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            with session_scope() as session:
                result = operation(session=session, **kwargs)
                session.commit()
                return result
        except OperationalError:
            if delay is None:
                raise
            log.warning("database unavailable for %s; retrying in %.1fs", operation.__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class JobReporter:
    """Writes what an attempt learns to the job, each write fenced by the attempt and retried through blips."""

    def __init__(self, job_id: str, attempt: int) -> None:
        self.fence = {"job_id": job_id, "attempt": attempt}

    def stats(self, stats: Any) -> bool:
        """Store the dataset statistics."""
        return write(record_stats, **self.fence, stats=stats.as_dict())

    def progress(self, progress: dict[str, Any]) -> str:
        """Store the latest progress; answers "continue", "drain" or "stop". An outage does not stop training."""
        try:
            return write(record_progress, **self.fence, progress=progress)
        except OperationalError:
            log.exception("progress not recorded; training goes on (the lease decides who owns the job)")
            return "continue"

    def metrics(self, step: int, metrics: dict[str, float | None]) -> None:
        """Append the logged metrics as a `progress` event."""
        write(record_metrics, **self.fence, step=step, metrics=metrics)

    def log(self, message: str, data: dict[str, Any]) -> None:
        """Append a `log` event."""
        write(record_log, **self.fence, message=message, data=data)

    def wandb(self, run_id: str, url: str | None, directory: str, mode: str) -> None:
        """Record where the W&B run lives."""
        write(record_wandb, **self.fence, run_id=run_id, url=url, directory=directory, mode=mode)

    def hub_commit(self, step: int | None, url: str) -> None:
        """Record a landed Hub commit (on its checkpoint, or the final one) with a `hub` event."""
        write(record_hub_commit, **self.fence, step=step, url=url)

    def hub_failed(self, step: int | None, message: str) -> None:
        """Record a failed Hub push as a warning."""
        write(record_hub_failure, **self.fence, step=step, message=message)

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float | None]) -> None:
        """Record a complete checkpoint."""
        write(record_checkpoint, **self.fence, step=step, path=str(path), metrics=metrics)


class OtherRankReporter:
    """What a rank other than 0 reports: nothing. Rank 0 speaks for the job (see worker.distributed), and its
    answers to progress reports reach this rank through the ranks' shared decisions."""

    def stats(self, stats: Any) -> bool:
        """Rank 0 stores the dataset statistics."""
        return True

    def progress(self, progress: dict[str, Any]) -> str:
        """Rank 0's answer is shared with this rank at the same step; this one only defers to it."""
        return CONTINUE

    def metrics(self, step: int, metrics: dict[str, float | None]) -> None:
        """Rank 0 appends the metrics."""

    def log(self, message: str, data: dict[str, Any]) -> None:
        """Rank 0 appends the events."""

    def wandb(self, run_id: str, url: str | None, directory: str, mode: str) -> None:
        """Rank 0 holds the W&B run."""

    def hub_commit(self, step: int | None, url: str) -> None:
        """Rank 0 pushes to the Hub."""

    def hub_failed(self, step: int | None, message: str) -> None:
        """Rank 0 pushes to the Hub."""

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float | None]) -> None:
        """Rank 0 records the checkpoints."""


def run(job_id: str, attempt: int) -> int:
    """Train one attempt of a job and record how it ended; the exit code is 0 when the outcome is recorded.

    Under `worker.launch` (several GPUs) every rank runs this; rank 0 alone reports and records the outcome, but any
    rank records the error it fails with (then exits non-zero, for the launcher to stop the rest).
    """
    # Heavy imports only after the job is known to exist.
    from worker.evaluation_job import run_evaluation
    from worker.training import train

    settings = get_settings()
    with session_scope() as session:
        job = get_job(session=session, job_id=job_id)
        spec, owner_id = JobSpec.model_validate(job.spec), job.owner_id
    main = is_main_rank()
    reporter = JobReporter(job_id, attempt) if main else OtherRankReporter()
    job_dir = settings.jobs_dir / job_id
    work = run_evaluation if spec.kind == "evaluation" else partial(train, job_id=job_id)
    try:
        outcome = work(
            spec,
            job_dir,
            settings.allowed_roots,
            reporter,
            interval_s=settings.progress_interval_s,
            credentials=credentials_for(owner_id),  # inside: an unreadable token fails the job, a blip requeues it
        )
    except OperationalError:
        log.exception("job %s attempt %s lost its database; exiting to be queued again", job_id, attempt)
        return EXIT_TEMPFAIL
    except Exception as exc:
        if is_out_of_memory(exc):
            # Memory can be a passing state of the box (another process, fragmentation): the task decides
            # whether this job gets its one retry with the same settings.
            log.exception("job %s attempt %s ran out of memory", job_id, attempt)
            return EXIT_OUT_OF_MEMORY
        if lost_a_peer(exc):
            log.exception("job %s attempt %s lost another rank; the launcher stops this one too", job_id, attempt)
            return EXIT_PEER_LOST
        error = classify(exc)
        log.exception("job %s attempt %s failed: %s", job_id, attempt, error.code)
        with session_scope() as session:  # any rank may: the attempt's fence lets the first one's error stand
            fail_job(session=session, job_id=job_id, attempt=attempt, error=error)
            session.commit()
        # A rank other than 0 exits non-zero: rank 0 may be waiting for it in a collective, so the launcher stops it.
        return 0 if main else EXIT_RANK_FAILED
    if not main:
        return 0
    if outcome.drained:
        requeued = write(requeue_drained, job_id=job_id, attempt=attempt)
        if requeued:
            enqueue_job(job_id)
        log.info("job %s attempt %s drained (%s)", job_id, attempt, "queued again" if requeued else "fenced off")
        return 0
    with session_scope() as session:
        if outcome.stopped:
            stored = finish_cancel(session=session, job_id=job_id, attempt=attempt)
        else:
            stored = succeed_job(
                session=session, job_id=job_id, attempt=attempt, result=outcome.result, progress=outcome.progress
            ) or finish_cancel(session=session, job_id=job_id, attempt=attempt)  # a cancel after the last step
        session.commit()
    ending = "stopped" if outcome.stopped else "finished"
    log.info("job %s attempt %s %s (%s)", job_id, attempt, ending, "recorded" if stored else "fenced off")
    return 0


SPARE_FLAG = "--spare"


def title(job_id: str, attempt: int) -> str:
    """The command line a trainer shows for its job, whether it started cold or as a spare (`ps`, /proc)."""
    return f"{sys.executable} -m worker.runner {job_id} {attempt}"


def run_spare() -> int:
    """Import the training stack, then wait for one `JOB_ID ATTEMPT LOG_PATH` line on standard input and run that
    attempt writing to that log; end of input (the worker stopped) exits quietly."""
    import worker.evaluation_job  # noqa: F401  (what a cold start spends its first seconds on)
    import worker.training  # noqa: F401

    handoff = parse_handoff(sys.stdin.readline())
    if handoff is None:
        return 0
    job_id, attempt, log_path = handoff
    _write_to(log_path)
    setproctitle.setproctitle(title(job_id, attempt))
    log.info("job %s attempt %s taken by spare trainer %s", job_id, attempt, os.getpid())
    return run(job_id, attempt)


def parse_handoff(line: str) -> tuple[str, int, Path] | None:
    """`JOB_ID ATTEMPT LOG_PATH` (the path may hold spaces) as the task writes it; None for anything else."""
    words = line.rstrip("\n").split(" ", 2)
    if len(words) != 3 or not words[1].isdigit():
        return None
    return words[0], int(words[1]), Path(words[2])


def _write_to(log_path: Path) -> None:
    # Standard output and error (Python's and any library's) go to the attempt's log from here on.
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main() -> None:
    """Entry point of the training process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if sys.argv[1:] == [SPARE_FLAG]:
        sys.exit(run_spare())
    code = run(sys.argv[1], int(sys.argv[2]))
    if code == 0 and "torch" in sys.modules:
        from worker.distributed import leave_process_group

        leave_process_group()  # after the attempt's objects are gone and its outcome is recorded
    sys.exit(code)


if __name__ == "__main__":
    main()
