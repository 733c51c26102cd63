"""`Idempotency-Key` on POST /jobs: replays return the first job, other bodies are refused, keys are per user."""

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.auth import create_api_key
from shared.db import session_scope
from shared.models import IdempotencyKey, User, utcnow


def post(client: TestClient, spec: dict[str, Any], key: str) -> Any:
    """POST /jobs with an Idempotency-Key."""
    return client.post("/jobs", json=spec, headers={"Idempotency-Key": key})


def job_ids(client: TestClient) -> list[str]:
    """Every job id the API lists."""
    return [job["id"] for job in client.get("/jobs", params={"limit": 100}).json()["data"]]


def test_a_retried_request_returns_the_job_the_first_one_created(client: TestClient, spec: dict[str, Any]) -> None:
    first = post(client, spec, "order-1")
    again = post(client, {"dataset": spec["dataset"], "base_model": spec["base_model"]}, "order-1")

    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert job_ids(client) == [first.json()["id"]]


def test_the_same_key_with_another_body_is_422(client: TestClient, spec: dict[str, Any]) -> None:
    post(client, spec, "order-2")

    response = post(client, {**spec, "metadata": {"changed": "yes"}}, "order-2")

    assert response.status_code == 422
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (
        "idempotency_key_reused",
        "Idempotency-Key",
    )
    assert len(job_ids(client)) == 1


def test_keys_are_scoped_to_their_user(client: TestClient, env: dict[str, str], spec: dict[str, Any]) -> None:
    with session_scope() as session:
        _other, raw = create_api_key(session=session, name="someone-else")
        session.commit()
    mine = post(client, spec, "shared-key").json()["id"]
    with TestClient(create_app(), headers={"Authorization": f"Bearer {raw}"}) as other:
        theirs = post(other, spec, "shared-key").json()["id"]

    assert mine != theirs


def reserve_by_hand(job_id: str | None, age: timedelta, body_hash: str = "x" * 64) -> None:
    """Put a key in the table as an earlier request would have left it."""
    with session_scope() as session:
        owner = session.query(User).one()
        record = IdempotencyKey(owner_id=owner.id, key="k", request_hash=body_hash, job_id=job_id)
        record.created_at = utcnow() - age
        session.add(record)
        session.commit()


def test_a_request_still_in_flight_makes_a_retry_409(client: TestClient, spec: dict[str, Any]) -> None:
    from shared.idempotency import request_hash
    from shared.spec import JobSpec

    reserve_by_hand(None, timedelta(seconds=5), request_hash(JobSpec.model_validate(spec).model_dump(mode="json")))

    response = post(client, spec, "k")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "request_in_progress"
    assert job_ids(client) == []


def test_a_request_that_died_in_flight_releases_its_key_after_a_while(client: TestClient, spec: dict[str, Any]) -> None:
    reserve_by_hand(None, timedelta(minutes=10))

    response = post(client, spec, "k")

    assert response.status_code == 201
    assert job_ids(client) == [response.json()["id"]]


def test_a_key_older_than_a_day_starts_a_new_job(client: TestClient, spec: dict[str, Any]) -> None:
    first = post(client, spec, "k").json()["id"]
    with session_scope() as session:
        session.get(IdempotencyKey, (session.query(User).one().id, "k")).created_at = utcnow() - timedelta(hours=25)
        session.commit()

    again = post(client, spec, "k")

    assert again.status_code == 201 and again.json()["id"] != first
    assert "Idempotent-Replayed" not in again.headers


def test_a_request_that_fails_after_reserving_its_key_releases_it(
    env: dict[str, str], api_key: str, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.routes.jobs as routes

    real_create_job = routes.create_job
    monkeypatch.setattr(routes, "create_job", lambda **kwargs: (_ for _ in ()).throw(RuntimeError("boom")))
    headers = {"Authorization": f"Bearer {api_key}"}
    with TestClient(create_app(), headers=headers, raise_server_exceptions=False) as client:
        failed = post(client, spec, "order-3")
        monkeypatch.setattr(routes, "create_job", real_create_job)
        retried = post(client, spec, "order-3")

    assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
