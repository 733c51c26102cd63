"""Jobs on several GPUs, below the stack: the API's checks of `resources`, the claim of N GPUs of one box in the
database (SQLite and PostgreSQL), the launcher's exit codes, and the time limit."""

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shared.attempts import Claim, claim_next_job, others_can_start
from shared.db import session_scope
from shared.jobs import cancel_job, create_job, get_job, pass_validation
from shared.models import JobStatus, User
from shared.placement import hold_box
from shared.spec import JobSpec
from shared.workers import list_workers, register_worker, stop_worker
from worker.exit_codes import EXIT_OUT_OF_MEMORY, EXIT_PEER_LOST
from worker.launch import wait_for_ranks
from worker.ranks import lost_a_peer
from worker.tasks import _record_exit, gpu_environment, supervise

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def register_box(hostname: str, gpus: int) -> list[str]:
    """Register one training worker per GPU of a box; returns their names."""
    names = [f"gpu{i}@{hostname}" for i in range(gpus)]
    with session_scope() as session:
        for i, name in enumerate(names):
            register_worker(
                session=session, name=name, kind="gpu", hostname=hostname, gpu=str(i), gpu_name=None, pid=1000 + i
            )
        session.commit()
    return names


def queue_job(spec: dict[str, Any], gpus: int = 1, time_limit_minutes: int | None = None) -> str:
    """A validated, queued job of the test's user asking for `gpus` GPUs."""
    resources = {"gpus": gpus, "time_limit_minutes": time_limit_minutes}
    with session_scope() as session:
        owner = session.scalars(select(User)).one()
        job = create_job(session=session, spec=JobSpec.model_validate({**spec, "resources": resources}), owner=owner)
        pass_validation(session=session, job_id=job.id, stats={}, planned_steps=1, warnings=[])
        session.commit()
        return job.id


def test_a_two_gpu_spec_is_stored_with_its_resources(client: TestClient, spec: dict[str, Any]) -> None:
    register_box("box", 2)

    response = client.post("/jobs", json={**spec, "resources": {"gpus": 2, "time_limit_minutes": 90}})

    assert response.status_code == 201, response.text
    assert response.json()["spec"]["resources"] == {"gpus": 2, "time_limit_minutes": 90}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"resources": {"gpus": 3}}, "invalid_value"),  # 16 rows a step do not split over 3 GPUs
        ({"resources": {"gpus": 4}}, "not_enough_gpus"),  # the largest box has 2
        ({"resources": {"gpus": 0}}, "invalid_request"),
        ({"resources": {"gpus": 2, "time_limit_minutes": 0}}, "invalid_request"),
    ],
)
def test_resources_no_box_can_serve_are_422_on_the_field(
    client: TestClient, spec: dict[str, Any], change: dict[str, Any], code: str
) -> None:
    register_box("box", 2)

    response = client.post("/jobs", json={**spec, **change})

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    param = error["param"] if code != "invalid_request" else error["details"][0]["param"]
    assert param.startswith("resources.")
    assert client.get("/jobs").json()["data"] == []


def test_an_evaluation_on_two_gpus_is_422(client: TestClient, spec: dict[str, Any], train_file: Any) -> None:
    evaluation = {"kind": "evaluation", "base_model": spec["base_model"], "evaluation": {"dataset": spec["dataset"]}}

    response = client.post("/jobs", json={**evaluation, "resources": {"gpus": 2}})

    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "resources.gpus"


def test_a_two_gpu_job_claims_two_gpus_of_one_box_and_holds_both(api_key: str, spec: dict[str, Any]) -> None:
    first, second = register_box("box", 2)
    big = queue_job(spec, gpus=2)
    queue_job(spec)  # one GPU: it would fit either worker, but not while the big job holds both

    with session_scope() as session:
        claim = claim_next_job(session=session, worker=second)
        session.commit()
        helper_claims = claim_next_job(session=session, worker=first)
        session.commit()
        holding = {worker.name: job.id if job else None for worker, job in list_workers(session=session)}

    assert claim is not None and (claim.job_id, claim.helpers, claim.devices) == (big, (first,), ("1", "0"))
    assert helper_claims is None  # its GPU is held by the big job: the small one waits
    assert holding == {first: big, second: big}


def test_a_worker_held_for_a_big_job_starts_nothing_and_leaves_the_bell(api_key: str, spec: dict[str, Any]) -> None:
    first, second = register_box("box", 2)
    running = queue_job(spec)
    with session_scope() as session:
        assert claim_next_job(session=session, worker=first) is not None
        session.commit()
    big, small = queue_job(spec, gpus=2), queue_job(spec)

    with session_scope() as session:
        claimed = claim_next_job(session=session, worker=second)
        ring_again = others_can_start(session=session, worker=second)
        session.commit()
        statuses = [get_job(session=session, job_id=j).status for j in (running, big, small)]

    assert claimed is None
    assert ring_again is False
    assert statuses == [JobStatus.running, JobStatus.queued, JobStatus.queued]


def test_a_job_with_a_short_time_limit_backfills_a_held_gpu(api_key: str, spec: dict[str, Any]) -> None:
    first, second = register_box("box", 2)
    running = queue_job(spec, time_limit_minutes=60)
    with session_scope() as session:
        assert claim_next_job(session=session, worker=first) is not None
        session.commit()
    queue_job(spec, gpus=2)
    too_long, short = queue_job(spec, time_limit_minutes=90), queue_job(spec, time_limit_minutes=30)

    with session_scope() as session:
        claim = claim_next_job(session=session, worker=second)
        session.commit()

    assert claim is not None and (claim.job_id, claim.time_limit_s) == (short, 30 * 60)
    with session_scope() as session:
        statuses = [get_job(session=session, job_id=j).status for j in (running, too_long, short)]
    assert statuses == [JobStatus.running, JobStatus.queued, JobStatus.running]


def test_a_busy_worker_passes_on_a_bell_that_a_free_worker_can_answer(api_key: str, spec: dict[str, Any]) -> None:
    (busy,), (free,) = register_box("a", 1), register_box("b", 1)
    queue_job(spec)
    with session_scope() as session:
        assert claim_next_job(session=session, worker=busy) is not None
        session.commit()
    waiting = queue_job(spec)

    with session_scope() as session:
        claimed = claim_next_job(session=session, worker=busy)
        ring_again = others_can_start(session=session, worker=busy)
        session.commit()
        claimed_there = claim_next_job(session=session, worker=free)
        session.commit()

    assert claimed is None and ring_again is True
    assert claimed_there is not None and claimed_there.job_id == waiting


def test_a_stopping_worker_claims_nothing(api_key: str, spec: dict[str, Any]) -> None:
    (worker,) = register_box("box", 1)
    job_id = queue_job(spec)
    with session_scope() as session:
        stop_worker(session=session, name=worker, pid=1000)
        claimed = claim_next_job(session=session, worker=worker)
        session.commit()
        status = get_job(session=session, job_id=job_id).status

    assert claimed is None and status is JobStatus.queued


def test_before_any_worker_registers_a_two_gpu_job_is_accepted(client: TestClient, spec: dict[str, Any]) -> None:
    response = client.post("/jobs", json={**spec, "resources": {"gpus": 2}})

    assert response.status_code == 201, response.text


def test_scoring_at_checkpoints_on_two_gpus_is_422(client: TestClient, spec: dict[str, Any]) -> None:
    evaluation = {"dataset": spec["dataset"], "at_checkpoints": True}

    response = client.post("/jobs", json={**spec, "evaluation": evaluation, "resources": {"gpus": 2}})

    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "resources.gpus"


def test_the_launch_sees_every_gpu_of_the_claim_the_launchers_first() -> None:
    on_gpus = gpu_environment(Claim("ftjob-x", 1, ("gpu0@box",), ("1", "0")))
    on_cpus = gpu_environment(Claim("ftjob-x", 1, ("cpu1@box",), (None, None)))

    assert on_gpus["CUDA_VISIBLE_DEVICES"] == "1,0"
    assert on_cpus.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_only_an_error_about_a_lost_rank_counts_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    lost = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:16271")
    monkeypatch.setenv("WORLD_SIZE", "2")

    assert lost_a_peer(lost) is True
    assert lost_a_peer(ValueError("row 3 has no template")) is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert lost_a_peer(lost) is False


def test_the_launcher_exits_with_the_failing_ranks_code_and_stops_the_others() -> None:
    ranks = [
        subprocess.Popen(SLEEPER),
        subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({EXIT_OUT_OF_MEMORY})"]),
    ]
    started = time.monotonic()

    code = wait_for_ranks(ranks, grace_s=0.5)

    assert code == EXIT_OUT_OF_MEMORY  # the task retries an out-of-memory attempt once
    assert ranks[0].poll() is not None
    assert time.monotonic() - started < 30


def test_a_killed_rank_is_the_launchers_reason_and_the_others_are_killed_at_once() -> None:
    killed, lost_peer, waiting = subprocess.Popen(SLEEPER), subprocess.Popen(SLEEPER), subprocess.Popen(SLEEPER)
    killed.kill()
    killed.wait()
    lost_peer.kill()  # stands for a rank that saw its collective fail: it exits with EXIT_PEER_LOST
    lost_peer.wait()
    lost_peer.returncode = EXIT_PEER_LOST
    started = time.monotonic()

    code = wait_for_ranks([lost_peer, killed, waiting], grace_s=60)

    assert code == 128 + 9  # as a shell reports SIGKILL: the task queues the job again
    assert waiting.poll() is not None
    assert time.monotonic() - started < 30  # not the 60 s grace an erroring rank would leave


def test_the_launcher_exits_zero_when_every_rank_does() -> None:
    ranks = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]

    assert wait_for_ranks(ranks, grace_s=0.5) == 0


def test_an_attempt_past_its_time_limit_is_killed_and_fails_naming_the_limit(
    api_key: str, spec: dict[str, Any]
) -> None:
    (worker,) = register_box("box", 1)
    job_id = queue_job(spec, time_limit_minutes=1)
    with session_scope() as session:
        claim = claim_next_job(session=session, worker=worker)
        session.commit()
    assert claim is not None
    process = subprocess.Popen(SLEEPER, process_group=0)

    code = supervise(process, job_id, claim.attempt, grace_s=5, time_limit_s=0.5)

    with session_scope() as session:
        job = get_job(session=session, job_id=job_id)
        error = (job.status, job.error_code, job.error_param)
    assert code == -9
    assert error == (JobStatus.failed, "time_limit_exceeded", "resources.time_limit_minutes")


def test_a_cancelling_attempt_past_its_time_limit_ends_cancelled(api_key: str, spec: dict[str, Any]) -> None:
    (worker,) = register_box("box", 1)
    job_id = queue_job(spec, time_limit_minutes=1)
    with session_scope() as session:
        claim = claim_next_job(session=session, worker=worker)
        cancel_job(session=session, job=get_job(session=session, job_id=job_id))
        session.commit()
    assert claim is not None
    process = subprocess.Popen(SLEEPER, process_group=0)
    started = time.monotonic()

    code = supervise(process, job_id, claim.attempt, grace_s=600, time_limit_s=0.5)
    _record_exit(job_id, claim.attempt, code)

    assert time.monotonic() - started < 30  # stopped by its time limit, not by the cancel's grace
    with session_scope() as session:
        assert get_job(session=session, job_id=job_id).status is JobStatus.cancelled


def hold_for(worker: str, seconds: float, started: threading.Event | None = None) -> float:
    """Take `worker`'s box lock in a session of its own, keep it `seconds`, commit; returns when the lock was had."""
    with session_scope() as session:
        hold_box(session=session, worker=worker)
        had = time.monotonic()
        if started is not None:
            started.set()
        time.sleep(seconds)
        session.commit()
    return had


def held_while_another_holds(holder: str, asker: str) -> float:
    """How long `asker` waited for its box lock while `holder` kept its own for a second."""
    holding = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(hold_for, holder, 1.0, holding)
        assert holding.wait(10)
        asked = time.monotonic()
        waited = hold_for(asker, 0) - asked
        held.result()
    return waited


def test_claims_on_one_box_take_its_lock_one_at_a_time(api_key: str) -> None:
    first, second = register_box("box", 2)

    assert held_while_another_holds(first, second) >= 0.5


def test_a_claim_on_another_box_waits_only_where_the_database_has_one_lock(env: dict[str, str], api_key: str) -> None:
    (first,), (elsewhere,) = register_box("box", 1), register_box("other", 1)
    one_lock = env["DATABASE_URL"].startswith("sqlite")  # SQLite: one write lock for the whole database

    waited = held_while_another_holds(first, elsewhere)

    assert (waited >= 0.5) is one_lock
