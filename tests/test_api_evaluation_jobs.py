"""Jobs of kind `evaluation` over the API, on SQLite and PostgreSQL: what they accept, and what they refuse with the
field at fault before anything is stored."""

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from shared.attempts import claim_job, succeed_job
from shared.db import session_scope
from shared.jobs import pass_validation
from shared.spec import JobSpec
from tests.conftest import client_for


@pytest.fixture
def evaluation(train_file: Path) -> dict[str, Any]:
    """The evaluation block: score the bundled rows."""
    return {"dataset": {"id": str(train_file), "max_rows": 8}, "baseline": True}


def finish(job_id: str, result: dict[str, Any]) -> None:
    """Play the workers' part in the database: the job is validated, claimed and succeeds with `result`."""
    with session_scope() as session:
        assert pass_validation(session=session, job_id=job_id, stats={"rows": 1}, planned_steps=1, warnings=[])
        attempt = claim_job(session=session, job_id=job_id, worker="test")
        assert attempt is not None
        assert succeed_job(session=session, job_id=job_id, attempt=attempt, result=result, progress={"step": 1})
        session.commit()


@pytest.fixture
def fine_tune(client: TestClient, spec: dict[str, Any], tmp_path: Path) -> str:
    """A succeeded fine-tune of the client's user, with a saved adapter."""
    job_id: str = client.post("/jobs", json=spec).json()["id"]
    finish(job_id, {"adapter_path": str(tmp_path / "adapter")})
    return job_id


def count_jobs(client: TestClient) -> int:
    """How many jobs the client's user has."""
    return len(client.get("/jobs", params={"limit": 100}).json()["data"])


def test_an_evaluation_of_a_succeeded_fine_tune_is_stored_and_sent_to_validation(
    client: TestClient, spec: dict[str, Any], evaluation: dict[str, Any], fine_tune: str
) -> None:
    body = {"kind": "evaluation", "base_model": spec["base_model"], "adapter": fine_tune, "evaluation": evaluation}

    response = client.post("/jobs", json=body)

    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["status"], job["spec"]["kind"], job["spec"]["adapter"]) == ("validating", "evaluation", fine_tune)
    assert job["spec"]["dataset"] is None and job["spec"]["evaluation"]["baseline"] is True


def test_a_base_model_alone_can_be_evaluated(
    client: TestClient, spec: dict[str, Any], evaluation: dict[str, Any]
) -> None:
    body = {"kind": "evaluation", "base_model": spec["base_model"], "evaluation": {**evaluation, "baseline": False}}

    response = client.post("/jobs", json=body)

    assert response.status_code == 201, response.text
    assert response.json()["spec"]["adapter"] is None


@pytest.mark.parametrize(
    ("change", "param", "message"),
    [
        ({"evaluation": None}, "evaluation", "needs its evaluation block"),
        ({"dataset": {"id": "org/rows"}}, "dataset", "trains nothing"),
        ({"hyperparameters": {"max_steps": 5}}, "hyperparameters", "fine_tune jobs only"),
        ({"lora": {"r": 8}}, "lora", "fine_tune jobs only"),
        ({"hub": {"repo_id": "org/out"}}, "hub", "fine_tune jobs only"),
        ({"adapter": None}, "evaluation", "baseline compares an adapter"),
        ({"evaluation": {"dataset": {"id": "org/rows"}, "at_checkpoints": True}}, "evaluation", "no checkpoints"),
        ({"kind": "fine_tune", "dataset": {"id": "org/rows"}}, "adapter", "evaluation jobs only"),
    ],
)
def test_a_spec_that_mixes_up_the_kinds_is_refused_naming_the_field(
    change: dict[str, Any], param: str, message: str
) -> None:
    body = {
        "kind": "evaluation",
        "base_model": "org/base",
        "adapter": "ftjob-" + "0" * 24,
        "evaluation": {"dataset": {"id": "org/rows"}, "baseline": True},
    }

    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate({**body, **change})

    errors = refused.value.errors()
    assert [error["loc"] for error in errors] == [(param,)]
    assert message in errors[0]["msg"]


def test_a_mixed_up_spec_is_422_naming_the_field_and_nothing_is_stored(
    client: TestClient, spec: dict[str, Any], evaluation: dict[str, Any]
) -> None:
    body = {"kind": "evaluation", "base_model": spec["base_model"], "evaluation": evaluation}

    response = client.post("/jobs", json={**body, "dataset": {"id": spec["dataset"]["id"]}})

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", "dataset")
    assert count_jobs(client) == 0


def test_a_fine_tune_still_needs_its_training_rows(client: TestClient, spec: dict[str, Any]) -> None:
    response = client.post("/jobs", json={"base_model": spec["base_model"]})

    assert response.status_code == 422
    assert response.json()["error"]["param"] == "dataset"


def test_an_adapter_job_that_has_not_succeeded_is_refused(
    client: TestClient, spec: dict[str, Any], evaluation: dict[str, Any]
) -> None:
    running = client.post("/jobs", json=spec).json()["id"]
    body = {"kind": "evaluation", "base_model": spec["base_model"], "adapter": running, "evaluation": evaluation}

    response = client.post("/jobs", json=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("adapter_not_ready", "adapter")
    assert "validating" in error["message"]


def test_an_unknown_job_or_another_users_job_is_not_an_adapter_you_can_name(
    client: TestClient, spec: dict[str, Any], evaluation: dict[str, Any], fine_tune: str
) -> None:
    body = {"kind": "evaluation", "base_model": spec["base_model"], "evaluation": evaluation}

    unknown = client.post("/jobs", json={**body, "adapter": "ftjob-" + "0" * 24})
    with client_for("mallory") as other:
        foreign = other.post("/jobs", json={**body, "adapter": fine_tune})
    with client_for("root", admin=True) as admin:
        by_admin = admin.post("/jobs", json={**body, "adapter": fine_tune})

    for response in (unknown, foreign):
        assert response.status_code == 422
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("adapter_not_found", "adapter")
    assert by_admin.status_code == 201, by_admin.text


def test_an_adapter_trained_on_another_base_model_is_refused(
    client: TestClient, spec: dict[str, Any], evaluation: dict[str, Any], fine_tune: str
) -> None:
    body = {"kind": "evaluation", "base_model": "meta-llama/Llama-3.1-8B", "adapter": fine_tune}

    response = client.post("/jobs", json={**body, "evaluation": evaluation})

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("base_model_mismatch", "base_model")
    assert spec["base_model"] in error["message"]


@pytest.mark.parametrize(
    ("adapter", "code"), [("/etc", "path_not_allowed"), ("{root}/no-such-adapter", "adapter_not_found")]
)
def test_a_local_adapter_outside_the_roots_or_missing_is_refused(
    client: TestClient,
    spec: dict[str, Any],
    evaluation: dict[str, Any],
    local_root: Path,
    adapter: str,
    code: str,
) -> None:
    body = {"kind": "evaluation", "base_model": spec["base_model"], "adapter": adapter.format(root=local_root)}

    response = client.post("/jobs", json={**body, "evaluation": evaluation})

    assert response.status_code == 422
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, "adapter")


def test_training_caps_do_not_stop_an_evaluation_but_its_row_cap_does(
    client: TestClient, spec: dict[str, Any], evaluation: dict[str, Any]
) -> None:
    with client_for("root", admin=True) as admin:
        capped = admin.patch("/users/tester", json={"limits": {"max_length": 100, "max_epochs": 0.5, "max_rows": 4}})
    body = {"kind": "evaluation", "base_model": spec["base_model"], "evaluation": {**evaluation, "baseline": False}}

    fine_tune = client.post("/jobs", json={**spec, "dataset": {**spec["dataset"], "max_rows": 4}})
    too_many = client.post("/jobs", json=body)
    few = client.post(
        "/jobs",
        json={**body, "evaluation": {**body["evaluation"], "dataset": {"id": spec["dataset"]["id"], "max_rows": 4}}},
    )

    assert capped.status_code == 200, capped.text
    assert fine_tune.status_code == 422 and fine_tune.json()["error"]["code"] == "limit_exceeded"
    assert (too_many.status_code, too_many.json()["error"]["param"]) == (422, "evaluation.dataset.max_rows")
    assert few.status_code == 201, few.text
