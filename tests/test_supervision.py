"""The task's supervision of a training process: cancel grace kill, and what a killed trainer leads to."""

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shared.attempts import claim_job, heartbeat, reclaim_expired
from shared.db import session_scope
from shared.jobs import cancel_job, create_job, get_job, pass_validation
from shared.models import JobStatus, User, utcnow
from shared.spec import JobSpec
from shared.workers import register_worker, stop_worker
from worker import tasks
from worker.runner import parse_handoff
from worker.tasks import _record_exit, supervise

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"


@pytest.fixture
def running_job(env: dict[str, str], api_key: str, spec: dict[str, Any]) -> str:
    """A job claimed by a worker (attempt 1)."""
    with session_scope() as session:
        owner = session.scalars(select(User)).one()
        job = create_job(session=session, spec=JobSpec.model_validate(spec), owner=owner)
        pass_validation(session=session, job_id=job.id, stats={}, planned_steps=1, warnings=[])
        assert claim_job(session=session, job_id=job.id, worker="test") == 1
        session.commit()
        return job.id


def status_of(job_id: str) -> tuple[JobStatus, str | None]:
    """A job's status and error code, read fresh."""
    with session_scope() as session:
        job = get_job(session=session, job_id=job_id)
        return job.status, job.error_code


def test_a_trainer_that_ignores_its_cancel_is_killed_after_the_grace_period(running_job: str) -> None:
    with session_scope() as session:
        cancel_job(session=session, job=get_job(session=session, job_id=running_job))
        session.commit()
    process = subprocess.Popen([sys.executable, "-c", STUBBORN], process_group=0)
    started = time.monotonic()

    code = supervise(process, running_job, 1, grace_s=0.5)
    _record_exit(running_job, 1, code)

    assert code == -9
    assert time.monotonic() - started < 10
    assert status_of(running_job) == (JobStatus.cancelled, None)


def test_a_trainer_killed_by_a_signal_is_queued_again(running_job: str) -> None:
    assert _record_exit(running_job, 1, -9) is True

    assert status_of(running_job) == (JobStatus.queued, None)


def test_a_trainer_that_exits_with_an_error_code_fails_the_job(running_job: str) -> None:
    assert _record_exit(running_job, 1, 1) is False

    assert status_of(running_job) == (JobStatus.failed, "worker_crashed")


def test_a_job_killed_on_its_last_attempt_fails(running_job: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import clear_caches

    monkeypatch.setenv("FTQ_MAX_ATTEMPTS", "1")
    clear_caches()

    assert _record_exit(running_job, 1, -9) is False

    assert status_of(running_job) == (JobStatus.failed, "worker_crashed")


def age_heartbeat(job_id: str, seconds: float) -> None:
    """Pretend the job's worker last beat `seconds` ago."""
    with session_scope() as session:
        job = get_job(session=session, job_id=job_id)
        job.heartbeat_at = utcnow() - timedelta(seconds=seconds)
        session.commit()


def test_a_job_whose_worker_stopped_beating_is_queued_again_and_the_old_attempt_is_fenced(running_job: str) -> None:
    age_heartbeat(running_job, 600)

    with session_scope() as session:
        requeued = reclaim_expired(session=session, ttl_s=120, max_attempts=3)
        session.commit()
        still_ours = heartbeat(session=session, job_id=running_job, attempt=1)

    assert requeued == [running_job]
    assert status_of(running_job) == (JobStatus.queued, None)
    assert still_ours is False, "the lost attempt must learn it no longer owns the job"


def test_a_fresh_heartbeat_keeps_the_job(running_job: str) -> None:
    with session_scope() as session:
        assert heartbeat(session=session, job_id=running_job, attempt=1)
        assert reclaim_expired(session=session, ttl_s=120, max_attempts=3) == []
        session.commit()

    assert status_of(running_job) == (JobStatus.running, None)


def test_a_lost_job_on_its_last_attempt_fails_with_worker_lost(running_job: str) -> None:
    age_heartbeat(running_job, 600)

    with session_scope() as session:
        assert reclaim_expired(session=session, ttl_s=120, max_attempts=1) == []
        session.commit()

    assert status_of(running_job) == (JobStatus.failed, "worker_lost")


def test_a_lost_job_that_was_being_cancelled_ends_cancelled(running_job: str) -> None:
    with session_scope() as session:
        cancel_job(session=session, job=get_job(session=session, job_id=running_job))
        session.commit()
    age_heartbeat(running_job, 600)

    with session_scope() as session:
        assert reclaim_expired(session=session, ttl_s=120, max_attempts=3) == []
        session.commit()

    assert status_of(running_job) == (JobStatus.cancelled, None)


def test_out_of_memory_is_retried_once_with_the_same_settings_then_fails(running_job: str) -> None:
    from worker.exit_codes import EXIT_OUT_OF_MEMORY

    first = _record_exit(running_job, 1, EXIT_OUT_OF_MEMORY)
    with session_scope() as session:
        assert claim_job(session=session, job_id=running_job, worker="test") == 2
        session.commit()
    second = _record_exit(running_job, 2, EXIT_OUT_OF_MEMORY)

    assert (first, second) == (True, False)
    with session_scope() as session:
        job = get_job(session=session, job_id=running_job)
        assert (job.status, job.error_code, job.error_param) == (
            JobStatus.failed,
            "out_of_memory",
            "hyperparameters.batch_size",
        )
        assert job.oom_retries == 1


def test_the_trainer_reports_out_of_memory_by_its_exit_code(running_job: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.runner
    import worker.training
    from worker.exit_codes import EXIT_OUT_OF_MEMORY

    class OutOfMemoryError(RuntimeError):  # the name torch.cuda.OutOfMemoryError carries
        pass

    def out_of_memory(*args: Any, **kwargs: Any) -> None:
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(worker.training, "train", out_of_memory)

    assert worker.runner.run(running_job, 1) == EXIT_OUT_OF_MEMORY
    assert status_of(running_job) == (JobStatus.running, None), "the task, not the trainer, decides what follows"


def test_an_attempt_goes_to_the_live_spare_and_a_dead_one_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = [sys.executable, "-c", "import sys; print(sys.stdin.readline().strip())"]
    alive = subprocess.Popen(echo, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    dead = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    dead.wait()
    monkeypatch.setattr(tasks, "_spare", [alive, dead])  # the newest is tried first

    taken = tasks._hand_to_spare("ftjob-1", 2, tmp_path / "attempt-2.log")
    nobody = tasks._hand_to_spare("ftjob-1", 3, tmp_path / "attempt-3.log")

    assert taken is alive and nobody is None and tasks._spare == []
    assert alive.stdout is not None and alive.wait(timeout=30) == 0
    assert alive.stdout.read().decode().strip() == f"ftjob-1 2 {tmp_path / 'attempt-2.log'}"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "ftjob-1 2 /data/my jobs/ftjob-1/attempt-2.log\n",
            ("ftjob-1", 2, Path("/data/my jobs/ftjob-1/attempt-2.log")),
        ),
        ("", None),
        ("ftjob-1 two /x.log\n", None),
    ],
)
def test_a_spare_reads_its_job_from_one_line_whose_log_path_may_hold_spaces(
    line: str, expected: tuple[str, int, Path] | None
) -> None:
    assert parse_handoff(line) == expected


@pytest.fixture
def no_spare() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The task module's spare list, empty before the test; any spare the test started is killed after it."""
    tasks._spare.clear()
    yield tasks._spare
    for spare in tasks._spare:
        spare.kill()
        spare.wait()
    tasks._spare.clear()


def test_a_worker_keeps_a_spare_after_its_jobs_unless_it_is_shutting_down(
    env: dict[str, str], no_spare: list[subprocess.Popen[bytes]]
) -> None:
    def registered(stopped: bool) -> None:
        with session_scope() as session:
            register_worker(session=session, name="gpu0@box", kind="gpu", hostname="box", gpu="0", gpu_name=None, pid=1)
            if stopped:
                stop_worker(session=session, name="gpu0@box", pid=1)
            session.commit()

    registered(stopped=True)  # SIGTERM: the main process marked the worker stopped before its task ended
    tasks._keep_a_spare("gpu0@box")
    assert no_spare == [], "no spare for a worker on its way out"

    registered(stopped=False)
    tasks._keep_a_spare("gpu0@box")
    assert len(no_spare) == 1 and no_spare[0].poll() is None, "an idle worker keeps one for its next job"
