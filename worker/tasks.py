"""The Celery task: a thin boundary that claims a job and runs it in a fresh training process it supervises."""

import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from celery.signals import worker_process_init, worker_shutting_down

from shared.attempts import (
    Claim,
    attempts_spent,
    claim_next_job,
    fail_job,
    finish_cancel,
    heartbeat,
    is_cancelling,
    others_can_start,
    request_drain,
    requeue_job,
)
from shared.db import session_scope
from shared.errors import FtqError, JobFailure
from shared.jobs import fail_validation, get_job, pass_validation
from shared.limits import check_planned_limits, user_limits
from shared.models import JobStatus
from shared.paths import check_local_refs
from shared.placement import is_stopped
from shared.queue import DRY_RUN_TASK, RUN_JOB_TASK, VALIDATE_JOB_TASK, enqueue_job
from shared.scheduling import jobs_waiting
from shared.settings import get_settings
from shared.spec import JobSpec
from shared.users import get_user
from worker.celery_app import app
from worker.errors import classify, out_of_memory_failure
from worker.exit_codes import EXIT_OUT_OF_MEMORY, EXIT_PEER_LOST, EXIT_TEMPFAIL
from worker.launch import die_with_this_process
from worker.registry import unregister
from worker.runner import SPARE_FLAG

log = logging.getLogger(__name__)
SUPERVISE_POLL_S = 1.0
EXIT_GRACE_S = 30.0  # how long a trainer that recorded its outcome may take to exit


def _beat(job_id: str, attempt: int) -> tuple[bool, bool, bool, bool]:
    """Extend the lease; returns (still ours, cancel requested, ended by this attempt, other jobs waiting)."""
    with session_scope() as session:
        ours = heartbeat(session=session, job_id=job_id, attempt=attempt)
        cancelling = ours and is_cancelling(session=session, job_id=job_id, attempt=attempt)
        job = get_job(session=session, job_id=job_id)
        ended_here = not ours and job.attempt == attempt and job.status.is_terminal
        waiting = jobs_waiting(session=session)
        session.commit()
    return ours, cancelling, ended_here, waiting


def supervise(
    process: subprocess.Popen[bytes],
    job_id: str,
    attempt: int,
    grace_s: float,
    *,
    spare: bool = False,
    time_limit_s: float | None = None,
) -> int:
    """Wait for the trainer while holding the job's lease; kill it if the job is taken from this attempt, if a cancel
    is not honoured within `grace_s`, or (failing the job) once it has run `time_limit_s`. With `spare`, start a
    spare trainer once another job is waiting."""
    cancel_seen: float | None = None
    started = time.monotonic()
    while True:
        try:
            return process.wait(timeout=SUPERVISE_POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if (
            time_limit_s is not None
            and _overtime(started, time_limit_s)
            and _fail_overtime(job_id, attempt, time_limit_s)
        ):
            log.warning("job %s ran past its time limit of %.0fs; killing it", job_id, time_limit_s)
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()
        try:
            ours, cancelling, ended_here, waiting = _beat(job_id, attempt)
        except Exception:  # a database blip must not orphan the trainer; the lease covers longer outages
            log.exception("heartbeat of job %s failed; will retry", job_id)
            continue
        if spare and waiting:
            _keep_a_spare()
        if ended_here:  # the trainer recorded the outcome and is exiting: let it finish (W&B, logs)
            return _wait_or_kill(process, EXIT_GRACE_S)
        if not ours:
            log.warning("job %s attempt %s was taken over; killing its trainer", job_id, attempt)
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()
        if not cancelling:
            continue
        cancel_seen = cancel_seen or time.monotonic()
        if time.monotonic() - cancel_seen >= grace_s:
            log.warning("job %s did not stop within %.0fs of its cancel; killing it", job_id, grace_s)
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()


def _overtime(started: float, limit_s: float) -> bool:
    return time.monotonic() - started >= limit_s


def _fail_overtime(job_id: str, attempt: int, limit_s: float) -> bool:
    """Fail a live attempt that ran past its time limit (a cancelling one is only stopped: its cancel ends it); False
    when it is no longer this attempt's to stop (or the database is away: the next poll tries again)."""
    minutes = limit_s / 60
    error = JobFailure(
        f"the job ran past its time limit of {minutes:g} minutes (attempt {attempt}); its checkpoints are kept",
        code="time_limit_exceeded",
        param="resources.time_limit_minutes",
    )
    try:
        with session_scope() as session:
            stop = is_cancelling(session=session, job_id=job_id, attempt=attempt) or fail_job(
                session=session, job_id=job_id, attempt=attempt, error=error
            )
            session.commit()
    except Exception:
        log.exception("could not fail job %s at its time limit; will retry", job_id)
        return False
    return stop


def _wait_or_kill(process: subprocess.Popen[bytes], grace_s: float) -> int:
    try:
        return process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("trainer %s did not exit %.0fs after recording its outcome; killing it", process.pid, grace_s)
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def run_training_process(claim: Claim) -> int:
    """Run the attempt's trainer, logging to the job's directory; returns its exit code.

    One GPU: `worker.runner`, handed to the spare trainer when one is alive (its imports are done), else started
    now; while it trains, a new spare starts importing as soon as another job is waiting. Several GPUs:
    `worker.launch`, one rank per GPU, on the GPUs the claim holds.
    """
    settings = get_settings()
    job_dir = settings.jobs_dir / claim.job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    log_path = job_dir / f"attempt-{claim.attempt}.log"
    args = [claim.job_id, str(claim.attempt)]
    if claim.helpers:
        process = _start_trainer("worker.launch", [str(len(claim.devices)), *args], log_path, gpu_environment(claim))
    else:
        process = _hand_to_spare(claim.job_id, claim.attempt, log_path) or _start_trainer(
            "worker.runner", args, log_path
        )
    return supervise(
        process,
        claim.job_id,
        claim.attempt,
        settings.cancel_grace_s,
        spare=True,  # a spare serves the next one-GPU job; a launch over several starts its own
        time_limit_s=claim.time_limit_s,
    )


def gpu_environment(claim: Claim) -> dict[str, str]:
    """The launcher's environment: every GPU of the claim visible, this worker's first (rank 0 runs there). A box
    whose workers report no GPU (a CPU box) trains its ranks on the CPU."""
    env = dict(os.environ)
    if all(device is not None for device in claim.devices):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(device) for device in claim.devices)
    return env


_spare: list[subprocess.Popen[bytes]] = []  # the spare trainer of this worker process, if one was started


def _keep_a_spare(worker: str | None = None) -> None:
    """Start a spare trainer unless spares are off (`FTQ_SPARE_TRAINER`), a live one is waiting, or `worker` has
    begun to shut down (a spare started then would be killed half-imported); a failure to start one never disturbs
    supervision."""
    if not get_settings().spare_trainer:
        return
    _spare[:] = [spare for spare in _spare if spare.poll() is None]
    if _spare:
        return
    if worker is not None:
        with session_scope() as session:
            if is_stopped(session=session, name=worker):
                return
    try:
        _spare.append(_start_trainer("worker.runner", [SPARE_FLAG], get_settings().jobs_dir / "spare-trainer.log"))
    except OSError:
        log.exception("could not start a spare trainer; the next job starts cold")


def _start_trainer(
    module: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A training process: for one attempt (`worker.runner`, or `worker.launch` for several GPUs), or a spare
    (`--spare`) waiting on stdin, which logs to the spares' log (a failed import is told there) until it takes a job
    and writes to that attempt's log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            stdin=subprocess.PIPE if args == [SPARE_FLAG] else subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_this_process(),  # if this task's process is killed, the trainer is too
            process_group=0,  # its own group, so a kill reaches any process it started too
        )


def _hand_to_spare(job_id: str, attempt: int, log_path: Path) -> subprocess.Popen[bytes] | None:
    """Give the attempt to the spare trainer; None when there is no live spare to take it."""
    while _spare:
        spare = _spare.pop()
        if spare.poll() is not None or spare.stdin is None:
            continue  # it died (a failed import, a kill): a cold start will log why, if there is a reason
        try:
            spare.stdin.write(f"{job_id} {attempt} {log_path}\n".encode())
            spare.stdin.close()
        except OSError:  # it died just now
            spare.wait()
            continue
        return spare
    return None


def _killed(code: int) -> bool:
    # Killed by a signal (OOM killer, kill -9, a lost machine): not the job's fault, so worth another attempt.
    # Popen reports a signal as a negative code; 128+N is how a shell wrapper would report it; the runner
    # exits EX_TEMPFAIL (75) when the database stayed away; a multi-GPU launch reports a rank that only lost its
    # peer (which can only die by a signal) when no rank's own failure was seen.
    return code < 0 or code >= 128 or code in (EXIT_TEMPFAIL, EXIT_PEER_LOST)


def _record_exit(job_id: str, attempt: int, code: int) -> bool:
    """Record how a trainer that did not report its own outcome ended; True when the job was queued again."""
    with session_scope() as session:
        if finish_cancel(session=session, job_id=job_id, attempt=attempt):
            session.commit()
            return False
        attempts_left = attempts_spent(session=session, job_id=job_id) < get_settings().max_attempts
        if code == EXIT_OUT_OF_MEMORY:
            retry = attempts_left and get_job(session=session, job_id=job_id).oom_retries == 0
            reason = "out of memory; retrying once with the same settings"
            error: FtqError = out_of_memory_failure(f"attempt {attempt}")
        else:
            retry = attempts_left and _killed(code)
            reason = f"training process exited with code {code}"
            error = JobFailure(f"the {reason} (attempt {attempt})", code="worker_crashed")
        oom = code == EXIT_OUT_OF_MEMORY
        if retry and requeue_job(session=session, job_id=job_id, attempt=attempt, reason=reason, oom=oom):
            session.commit()
            return True
        fail_job(session=session, job_id=job_id, attempt=attempt, error=error)
        session.commit()
        return False


@worker_process_init.connect
def warm_up(**_kwargs: Any) -> None:
    """As a pool process starts, get its first job's imports done ahead. A validation worker's imports the validation
    stack (in the background: it takes seconds, and Celery waits only a few for a new process), so the first job
    after a start is checked as fast as the next. A training worker's stays light (its trainers import in their own
    processes): it starts a spare trainer, so that its first job does not wait for them either."""
    if get_settings().validate_queue_name in {queue.name for queue in app.amqp.queues.consume_from.values()}:
        threading.Thread(target=importlib.import_module, args=("worker.validation",), daemon=True).start()
    else:
        _keep_a_spare()


@worker_shutting_down.connect
def drain_running_jobs(sender: str, **_kwargs: Any) -> None:
    """On SIGTERM (a deploy): the jobs of this worker checkpoint and go back to the queue, spending no attempt.

    Runs in the worker's main process; the warm shutdown then waits for the tasks, which end once their
    trainers have saved and stopped.
    """
    unregister()  # first: marked stopped, no job is placed on this worker's GPU and its task claims nothing more
    with session_scope() as session:
        drained = request_drain(session=session, worker=sender)
        session.commit()
    for job_id in drained:
        log.warning("worker %s shutting down: job %s will checkpoint and be queued again", sender, job_id)


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self: Any, job_id: str) -> None:
    """Claim the job this worker should launch now (the message is a bell) and train it in a supervised child
    process; then the next one, while one fits, so that GPUs freed here start what waited for them."""
    worker = str(self.request.hostname or socket.gethostname())
    claim = _claim(worker)
    if claim is None:
        log.info("nothing for %s to launch (bell for %s)", worker, job_id)
        _ring_for_others(worker, job_id)  # a job fits other workers' free GPUs: pass the bell on to them
        return
    while claim is not None:
        _run_attempt(claim, worker)
        claim = _claim(worker)  # nothing once this worker is stopping (its registry row says so)
        _ring_for_others(worker, job_id)  # GPUs this attempt held may let jobs start on other workers too
    _keep_a_spare(worker)  # idle now: its next job is taken by a trainer with its imports done


def _ring_for_others(worker: str, job_id: str) -> None:
    with session_scope() as session:
        ring = others_can_start(session=session, worker=worker)
    if ring:
        enqueue_job(job_id)


def _claim(worker: str) -> Claim | None:
    with session_scope() as session:
        claim = claim_next_job(session=session, worker=worker)
        session.commit()
    return claim


def _run_attempt(claim: Claim, worker: str) -> None:
    job_id, attempt = claim.job_id, claim.attempt
    log.info("job %s attempt %s starts on %s", job_id, attempt, ", ".join((worker, *claim.helpers)))
    code = run_training_process(claim)
    if code != 0 and _record_exit(job_id, attempt, code):
        enqueue_job(job_id)
    log.info("job %s attempt %s ended (exit code %s)", job_id, attempt, code)


def _validate(spec: JobSpec, owner_id: str) -> Any:
    """Validate as the owner: with their HF token, and within their row and step limits."""
    # Imported here: the tokenizer stack (transformers, torch) loads in the pool child that runs the task, never in
    # the parent; the training stack (PEFT, TRL, bitsandbytes) not at all.
    from worker.credentials import credentials_for
    from worker.validation import validate

    settings = get_settings()
    check_local_refs(spec, settings.allowed_roots)
    result = validate(spec, settings.allowed_roots, settings.validate_sample_rows, credentials_for(owner_id).hf_token)
    with session_scope() as session:
        limits = user_limits(get_user(session=session, user_id=owner_id))
    check_planned_limits(limits, spec, rows=result.rows, planned_steps=result.planned_steps)
    return result


@app.task(name=VALIDATE_JOB_TASK)
def validate_job(job_id: str) -> None:
    """Check a new job's tokenizer and data; queue it for a GPU, or fail it with the field at fault."""
    with session_scope() as session:
        job = get_job(session=session, job_id=job_id)
        if job.status is not JobStatus.validating:
            log.info("job %s is %s, not validating; message dropped", job_id, job.status.value)
            return
        spec, owner_id = JobSpec.model_validate(job.spec), job.owner_id
    try:
        result = _validate(spec, owner_id)
    except Exception as exc:  # anything unexpected must end the job too, not leave it validating
        log.exception("validation of job %s failed", job_id)
        with session_scope() as session:
            fail_validation(session=session, job_id=job_id, error=classify(exc))
            session.commit()
        return
    with session_scope() as session:
        queued = pass_validation(
            session=session,
            job_id=job_id,
            stats=result.stats,
            planned_steps=result.planned_steps,
            warnings=result.warnings,
            unit="answers" if spec.kind == "evaluation" else "steps",
        )
        session.commit()
    if queued:
        enqueue_job(job_id)


@app.task(name=DRY_RUN_TASK, ignore_result=False)
def dry_run(spec_json: dict[str, Any], owner_id: str) -> dict[str, Any]:
    """Validate a spec as its would-be owner without storing anything; answer its stats and planned steps, or its
    error."""
    try:
        result = _validate(JobSpec.model_validate(spec_json), owner_id)
    except Exception as exc:
        return {"error": classify(exc).as_dict()}
    return {"stats": result.stats, "planned_steps": result.planned_steps, "warnings": result.warnings}
