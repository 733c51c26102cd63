"""Cancel, events (paged and streamed) and checkpoints over the API, on SQLite and PostgreSQL."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.attempts import claim_job, record_checkpoint, succeed_job
from shared.db import session_scope
from shared.jobs import pass_validation
from tests.services import read_sse


def make_job(client: TestClient, spec: dict[str, Any]) -> str:
    """Create a queued job over the API."""
    response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def validate_in_db(job_id: str) -> None:
    """Play the validation worker's part in the database: the job passes and is queued."""
    with session_scope() as session:
        assert pass_validation(session=session, job_id=job_id, stats={"rows": 1}, planned_steps=1, warnings=[])
        session.commit()


def run_to_success(job_id: str) -> int:
    """Play the workers' part in the database: validate, claim the job and record success."""
    validate_in_db(job_id)
    return run_to_success_from_queue(job_id)


def run_to_success_from_queue(job_id: str) -> int:
    """Play the GPU worker's part in the database: claim a queued job and record success."""
    with session_scope() as session:
        attempt = claim_job(session=session, job_id=job_id, worker="test")
        assert attempt is not None
        succeed_job(session=session, job_id=job_id, attempt=attempt, result={}, progress={"step": 1})
        session.commit()
    return attempt


def statuses(client: TestClient, job_id: str) -> list[str]:
    """The statuses in a job's event log, in order."""
    events = client.get(f"/jobs/{job_id}/events").json()["data"]
    return [e["data"]["status"] for e in events if e["type"] == "status"]


def test_cancelling_a_queued_job_means_it_never_starts(client: TestClient, spec: dict[str, Any]) -> None:
    job_id = make_job(client, spec)

    response = client.post(f"/jobs/{job_id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]
    with session_scope() as session:
        assert claim_job(session=session, job_id=job_id, worker="late-worker") is None
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
    assert statuses(client, job_id) == ["validating", "cancelled"]


def test_cancelling_a_running_job_asks_it_to_stop(client: TestClient, spec: dict[str, Any]) -> None:
    job_id = make_job(client, spec)
    validate_in_db(job_id)
    with session_scope() as session:
        claim_job(session=session, job_id=job_id, worker="w")
        session.commit()

    first, again = client.post(f"/jobs/{job_id}/cancel"), client.post(f"/jobs/{job_id}/cancel")

    assert first.json()["status"] == again.json()["status"] == "cancelling"
    assert statuses(client, job_id) == ["validating", "queued", "running", "cancelling"]


def test_cancelling_a_finished_job_is_409(client: TestClient, spec: dict[str, Any]) -> None:
    job_id = make_job(client, spec)
    run_to_success(job_id)

    response = client.post(f"/jobs/{job_id}/cancel")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"
    assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"


def test_cancel_of_an_unknown_job_is_404(client: TestClient) -> None:
    assert client.post("/jobs/ftjob-nope/cancel").status_code == 404


def test_events_page_oldest_first_with_after_and_has_more(client: TestClient, spec: dict[str, Any]) -> None:
    job_id = make_job(client, spec)
    run_to_success(job_id)

    page1 = client.get(f"/jobs/{job_id}/events", params={"limit": 3}).json()
    page2 = client.get(f"/jobs/{job_id}/events", params={"limit": 3, "after": page1["data"][-1]["id"]}).json()

    assert page1["has_more"] is True and page2["has_more"] is False
    events = page1["data"] + page2["data"]
    assert [e["data"]["status"] for e in events] == ["validating", "queued", "running", "succeeded"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert set(events[0]) == {"id", "object", "created_at", "type", "level", "message", "data"}


def test_stream_sends_every_event_then_ends_and_resumes_after_last_event_id(
    client: TestClient, spec: dict[str, Any]
) -> None:
    job_id = make_job(client, spec)
    run_to_success(job_id)

    whole = read_sse(client, f"/jobs/{job_id}/events/stream")
    resumed = read_sse(client, f"/jobs/{job_id}/events/stream", {"Last-Event-ID": whole[0][0]})

    assert [(event, data["data"]["status"]) for _id, event, data in whole[:-1]] == [
        ("status", "validating"),
        ("status", "queued"),
        ("status", "running"),
        ("status", "succeeded"),
    ]
    assert whole[-1][1] == "end"
    assert [item[0] for item in resumed[:-1]] == [item[0] for item in whole[1:-1]]


def test_checkpoints_list_with_download_urls(client: TestClient, spec: dict[str, Any], tmp_path: Any) -> None:
    job_id = make_job(client, spec)
    validate_in_db(job_id)
    with session_scope() as session:
        attempt = claim_job(session=session, job_id=job_id, worker="w")
        assert attempt is not None
        for step in (4, 2):
            record_checkpoint(
                session=session, job_id=job_id, attempt=attempt, step=step, path=str(tmp_path), metrics={"loss": 1.5}
            )
        session.commit()

    data = client.get(f"/jobs/{job_id}/checkpoints").json()["data"]

    assert [(c["step"], c["metrics"], c["hub_commit_url"]) for c in data] == [
        (2, {"loss": 1.5}, None),
        (4, {"loss": 1.5}, None),
    ]
    assert data[0]["download_url"] == f"/jobs/{job_id}/checkpoints/2/download"
    assert client.get(f"/jobs/{job_id}/checkpoints/3/download").status_code == 404
    assert client.get(f"/jobs/{job_id}/adapter/download").status_code == 404


@pytest.mark.parametrize("path", ["/jobs/{id}/events", "/jobs/{id}/events/stream", "/jobs/{id}/checkpoints"])
def test_job_subresources_of_unknown_jobs_are_404(client: TestClient, path: str) -> None:
    response = client.get(path.format(id="ftjob-unknown"))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_queued_jobs_show_their_place_in_line(client: TestClient, spec: dict[str, Any]) -> None:
    first, second, third = (make_job(client, spec) for _ in range(3))
    for job_id in (first, second, third):
        validate_in_db(job_id)

    assert [client.get(f"/jobs/{j}").json()["queue_position"] for j in (first, second, third)] == [1, 2, 3]
    run_to_success_from_queue(first)
    listed = {j["id"]: j["queue_position"] for j in client.get("/jobs").json()["data"]}
    assert listed == {first: None, second: 1, third: 2}
