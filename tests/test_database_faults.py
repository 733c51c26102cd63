"""The API while its PostgreSQL server is down: 503 (not 500), and it recovers by itself once the server is back."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.auth import create_api_key
from shared.db import session_scope
from shared.migrate import upgrade_database
from tests.conftest import REDIS_URL, clear_caches, stack_client
from tests.services import wait_for_end, wait_until
from tests.throwaway_postgres import ThrowawayPostgres

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server this test may stop and start."""
    server = ThrowawayPostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        clear_caches()
        server.remove()


@pytest.fixture
def faults_client(
    own_postgres: ThrowawayPostgres, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, local_root: Path
) -> Iterator[TestClient]:
    """A client of the API on the PostgreSQL server this test may stop and start."""
    for name, value in {
        "DATABASE_URL": own_postgres.url,
        "FTQ_DATA_DIR": str(tmp_path),
        "BROKER_URL": REDIS_URL,
        "FTQ_LOCAL_ROOTS": str(local_root),
    }.items():
        monkeypatch.setenv(name, value)
    clear_caches()
    upgrade_database(own_postgres.url)
    with session_scope() as session:
        _key, raw = create_api_key(session=session, name="faults")
        session.commit()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {raw}"}) as client:
        yield client


def test_api_answers_503_while_postgres_is_down_and_recovers(
    own_postgres: ThrowawayPostgres, faults_client: TestClient, spec: dict[str, Any]
) -> None:
    assert faults_client.get("/jobs").status_code == 200

    own_postgres.stop()
    down = [faults_client.get("/jobs"), faults_client.post("/jobs", json=spec), faults_client.get("/healthz")]
    own_postgres.start()
    back = faults_client.get("/jobs")

    assert [r.status_code for r in down] == [503, 503, 503]
    assert all(r.json()["error"]["code"] == "database_unavailable" for r in down)
    assert down[0].headers["Retry-After"] == "5"
    assert back.status_code == 200


def test_the_first_polls_after_postgres_restarted_are_answered_not_failed(
    own_postgres: ThrowawayPostgres, faults_client: TestClient, spec: dict[str, Any]
) -> None:
    """The read routes' pooled connections are not pinged before use: each dead one fails its first statement, and
    the read runs again on a fresh connection instead of answering 503."""
    job_id = faults_client.post("/jobs", json=spec).json()["id"]
    assert faults_client.get(f"/jobs/{job_id}").status_code == 200  # the key is checked and a connection pooled

    own_postgres.stop()
    own_postgres.start()
    polls = [faults_client.get(path) for path in (f"/jobs/{job_id}", "/jobs", f"/jobs/{job_id}/events")]

    assert [poll.status_code for poll in polls] == [200, 200, 200]
    assert polls[0].json()["id"] == job_id


@pytest.mark.training
@pytest.mark.redis
def test_a_job_survives_its_postgres_restarting_mid_training(
    own_postgres: ThrowawayPostgres, tmp_path: Path, local_root: Path, tiny_model: Path, train_file: Path
) -> None:
    hp = {"batch_size": 4, "max_length": 320, "max_steps": 30, "save_steps": 5, "logging_steps": 1}
    spec = {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}, "hyperparameters": hp}
    with stack_client(own_postgres.url, tmp_path / "stack", local_root) as api:
        job_id = api.post("/jobs", json=spec).json()["id"]
        wait_until(lambda: api.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 3, what="training to start")

        own_postgres.stop()
        time.sleep(3)
        own_postgres.start()
        job = wait_for_end(api, job_id, timeout_s=240)
        events = api.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]

    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["step"] == 30
    assert sum(1 for e in events if e["type"] == "status" and e["data"]["status"] == "succeeded") == 1
