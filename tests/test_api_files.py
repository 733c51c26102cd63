"""Dataset uploads: format checked on the way in, size limit, ids usable as dataset.id, safe delete."""

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import clear_caches


def upload(client: TestClient, name: str, content: bytes) -> Any:
    """POST /files with one file."""
    return client.post("/files", files={"file": (name, content, "application/octet-stream")})


def uploads_on_disk(env: dict[str, str]) -> list[str]:
    """Every file in the uploads directory, partial ones included."""
    folder = Path(env["FTQ_DATA_DIR"]) / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    """Rows as JSON Lines."""
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def test_a_jsonl_upload_is_counted_and_usable_as_a_dataset_id(
    client: TestClient, env: dict[str, str], spec: dict[str, Any], pricer_rows: list[Any]
) -> None:
    response = upload(client, "pricer.jsonl", jsonl(pricer_rows[:10]))

    assert response.status_code == 201, response.text
    file = response.json()
    assert (file["object"], file["format"], file["rows"], file["filename"]) == ("file", "jsonl", 10, "pricer.jsonl")
    assert client.get("/files").json()["data"] == [file]
    assert client.get(f"/files/{file['id']}").json() == file
    assert uploads_on_disk(env) == [f"{file['id']}.jsonl"]
    spec["dataset"]["id"] = file["id"]
    assert client.post("/jobs", json=spec).status_code == 201


def test_an_unknown_file_id_in_a_spec_is_422(client: TestClient, spec: dict[str, Any]) -> None:
    spec["dataset"]["id"] = "file-000000000000000000000000"

    response = client.post("/jobs", json=spec)

    assert response.status_code == 422
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("file_not_found", "dataset.id")


@pytest.mark.parametrize(
    ("name", "content", "code", "says"),
    [
        ("rows.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": oops}\n', "invalid_file", "line 3"),
        ("rows.jsonl", b'{"text": "a"}\n["not", "an", "object"]\n', "invalid_file", "line 2"),
        ("rows.csv", b"", "invalid_file", "header"),
        ("rows.parquet", b"PAR1 this is not parquet", "invalid_file", "PAR1"),
        ("rows.txt", b"text", "unsupported_format", ".jsonl"),
    ],
)
def test_a_malformed_upload_is_422_and_leaves_nothing_behind(
    client: TestClient, env: dict[str, str], name: str, content: bytes, code: str, says: str
) -> None:
    response = upload(client, name, content)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code and says in response.json()["error"]["message"]
    assert client.get("/files").json()["data"] == []
    assert uploads_on_disk(env) == []


def test_a_csv_upload_counts_rows_below_the_header(client: TestClient) -> None:
    response = upload(client, "rows.csv", b'text,price\n"a, b Price is $1.00",1\nc Price is $2.00,2\n')

    assert response.status_code == 201 and response.json()["rows"] == 2


def test_an_upload_over_the_limit_is_413_and_leaves_nothing_behind(
    client: TestClient, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTQ_MAX_UPLOAD_MB", "1")
    clear_caches()

    response = upload(client, "big.jsonl", jsonl([{"text": "x" * 1000}] * 1500))

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert uploads_on_disk(env) == []


def test_a_file_in_use_by_an_unfinished_job_cannot_be_deleted(
    client: TestClient, env: dict[str, str], spec: dict[str, Any], pricer_rows: list[Any]
) -> None:
    file_id = upload(client, "pricer.jsonl", jsonl(pricer_rows[:5])).json()["id"]
    spec["dataset"]["id"] = file_id
    job_id = client.post("/jobs", json=spec).json()["id"]

    refused = client.delete(f"/files/{file_id}")
    client.post(f"/jobs/{job_id}/cancel")
    deleted = client.delete(f"/files/{file_id}")

    assert refused.status_code == 409 and refused.json()["error"]["code"] == "file_in_use"
    assert deleted.status_code == 204
    assert client.get(f"/files/{file_id}").status_code == 404
    assert uploads_on_disk(env) == []
