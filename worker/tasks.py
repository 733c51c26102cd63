"""The Celery task: a thin boundary that claims a job and runs it in a fresh training process."""

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys

from shared.db import session_scope
from shared.errors import JobFailure
from shared.jobs import claim_job, fail_job
from shared.queue import RUN_JOB_TASK
from shared.settings import get_settings
from worker.celery_app import app

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If this task's process is killed, the kernel kills the trainer too: no orphan keeps the GPU.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_training_process(job_id: str, attempt: int) -> int:
    """Run `worker.runner` for one attempt, logging to the job's directory; returns its exit code."""
    job_dir = get_settings().jobs_dir / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    with open(job_dir / f"attempt-{attempt}.log", "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.runner", job_id, str(attempt)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        return process.wait()


@app.task(name=RUN_JOB_TASK)
def run_job(job_id: str) -> None:
    """Claim a queued job and train it in a child process; record a crash if the child dies."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with session_scope() as session:
        attempt = claim_job(session=session, job_id=job_id, worker=worker)
        session.commit()
    if attempt is None:
        log.info("job %s is not queued any more; message dropped", job_id)
        return
    log.info("job %s attempt %s starts on %s", job_id, attempt, worker)
    code = run_training_process(job_id, attempt)
    if code != 0:
        error = JobFailure(f"the training process exited with code {code}", code="worker_crashed")
        with session_scope() as session:
            fail_job(session=session, job_id=job_id, attempt=attempt, error=error)
            session.commit()
    log.info("job %s attempt %s ended (exit code %s)", job_id, attempt, code)
