"""Each key sees only its own jobs and files (another's is a 404, as if it did not exist); an admin key sees all."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import client_for


@pytest.fixture
def others(env: dict[str, str]) -> Iterator[tuple[TestClient, TestClient]]:
    """Another user's client and an admin's."""
    with client_for("bob") as bob, client_for("root", admin=True) as admin:
        yield bob, admin


def test_another_users_job_does_not_exist_for_you(
    client: TestClient, others: tuple[TestClient, TestClient], spec: dict[str, Any]
) -> None:
    bob, admin = others
    job_id = client.post("/jobs", json=spec).json()["id"]

    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/events", f"/jobs/{job_id}/checkpoints"):
        assert bob.get(path).status_code == 404, path
    assert bob.post(f"/jobs/{job_id}/cancel").status_code == 404
    assert bob.get("/jobs").json()["data"] == []
    assert client.get(f"/jobs/{job_id}").json()["status"] == "validating", "bob's cancel changed nothing"
    assert [j["id"] for j in admin.get("/jobs").json()["data"]] == [job_id]
    assert admin.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_another_users_file_cannot_be_read_listed_deleted_or_trained_on(
    client: TestClient, others: tuple[TestClient, TestClient], spec: dict[str, Any]
) -> None:
    bob, admin = others
    file_id = client.post("/files", files={"file": ("rows.jsonl", b'{"text": "a Price is $1.00"}\n')}).json()["id"]

    assert bob.get(f"/files/{file_id}").status_code == 404
    assert bob.get("/files").json()["data"] == []
    assert bob.delete(f"/files/{file_id}").status_code == 404
    refused = bob.post("/jobs", json={**spec, "dataset": {"id": file_id}})
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "file_not_found")
    assert admin.get(f"/files/{file_id}").status_code == 200
    assert client.get(f"/files/{file_id}").status_code == 200
