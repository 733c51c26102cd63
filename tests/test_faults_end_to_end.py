"""Faults between the API, the broker and the workers, on PostgreSQL and Redis with real training:
an API that died between commit and publish, a job published twice, messages lost to a Redis flush."""

from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from shared.db import session_scope
from shared.jobs import create_job
from shared.models import User
from shared.queue import RUN_JOB_TASK
from shared.spec import JobSpec
from tests.conftest import REDIS_URL, clear_caches, stack_client
from tests.services import StackClient, wait_for_end, wait_until
from tests.throwaway_redis import throwaway_redis

pytestmark = [pytest.mark.training, pytest.mark.redis, pytest.mark.postgres]


def short_spec(tiny_model: Path, train_file: Path) -> dict[str, Any]:
    """Two steps of training."""
    hp = {"batch_size": 4, "max_length": 320, "max_steps": 2}
    return {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}, "hyperparameters": hp}


def commit_without_publishing(api: StackClient, spec: dict[str, Any]) -> str:
    """Do what an API that crashed right after its commit did: store the job, send nothing."""
    url = api.stack.settings.db_url
    with session_scope(url) as session:
        owner = session.scalars(select(User)).first()
        assert owner is not None
        job = create_job(session=session, spec=JobSpec.model_validate(spec), owner=owner)
        session.commit()
        return job.id


def ring(api: StackClient, job_id: str, times: int) -> None:
    """Publish extra GPU messages for a job, as a duplicate publish would."""
    from celery import Celery

    app = Celery(broker=REDIS_URL)
    for _ in range(times):
        app.send_task(RUN_JOB_TASK, args=[job_id], queue=api.stack.settings.queue_name, ignore_result=True)


def test_a_job_committed_but_never_published_still_runs(
    pg_api: StackClient, tiny_model: Path, train_file: Path
) -> None:
    job_id = commit_without_publishing(pg_api, short_spec(tiny_model, train_file))

    job = wait_for_end(pg_api, job_id, timeout_s=120)

    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 1
    clear_caches()


def test_a_job_published_three_times_runs_once(pg_api: StackClient, tiny_model: Path, train_file: Path) -> None:
    job_id = pg_api.post("/jobs", json=short_spec(tiny_model, train_file)).json()["id"]
    wait_until(lambda: pg_api.get(f"/jobs/{job_id}").json()["status"] != "validating", what="validation")
    ring(pg_api, job_id, times=2)

    job = wait_for_end(pg_api, job_id)

    assert job["status"] == "succeeded" and job["attempt"] == 1
    events = pg_api.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    assert [e["data"]["status"] for e in events if e["type"] == "status"].count("running") == 1


def test_messages_lost_to_a_redis_flush_are_replaced(pg_api: StackClient, tiny_model: Path, train_file: Path) -> None:
    pg_api.stack.kill_worker()
    job_id = pg_api.post("/jobs", json=short_spec(tiny_model, train_file)).json()["id"]
    wait_until(lambda: pg_api.get(f"/jobs/{job_id}").json()["status"] == "queued", what="validation")
    redis.Redis.from_url(REDIS_URL).delete(pg_api.stack.settings.queue_name)
    pg_api.stack.restart_worker()

    job = wait_for_end(pg_api, job_id)

    assert job["status"] == "succeeded" and job["attempt"] == 1


def test_the_workers_keep_consuming_after_redis_restarts_under_a_running_job(
    tmp_path: Path, local_root: Path, tiny_model: Path, train_file: Path
) -> None:
    # A Redis of this test's own: restarting the local one would cut off the tests running beside it.
    with (
        throwaway_redis() as broker,
        stack_client("postgres", tmp_path / "stack", local_root, {"BROKER_URL": broker.url}) as api,
    ):
        spec = short_spec(tiny_model, train_file)
        spec["hyperparameters"]["max_steps"] = 12
        running = api.post("/jobs", json=spec).json()["id"]
        wait_until(lambda: api.get(f"/jobs/{running}").json()["status"] == "running", what="training to start")

        broker.restart()
        after = api.post("/jobs", json=short_spec(tiny_model, train_file)).json()["id"]

        assert wait_for_end(api, running)["status"] == "succeeded"
        assert wait_for_end(api, after)["status"] == "succeeded", "validation and GPU workers took new messages"
