"""Team features of the API: who am I, stored tokens (encrypted, never shown), per-user limits, the rate
limit, and what only an admin may change."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shared.db import session_scope
from shared.jobs import pass_validation
from shared.models import UserSecret
from shared.settings import get_settings
from shared.vault import read_secrets
from tests.conftest import clear_caches, client_for

FAKE_HF = f"hf_teamTest{uuid.uuid4().hex}"
FAKE_WANDB = f"wandbTest{uuid.uuid4().hex}"


@pytest.fixture
def admin(env: dict[str, str]) -> Iterator[TestClient]:
    """A client of an admin."""
    with client_for("root", admin=True) as test_client:
        yield test_client


def test_me_names_the_keys_user_their_limits_and_job_counts(client: TestClient, spec: dict[str, Any]) -> None:
    client.post("/jobs", json=spec)

    me = client.get("/me").json()

    assert (me["name"], me["is_admin"], me["priority"]) == ("tester", False, 0)
    assert me["jobs"] == {"validating": 1}
    assert me["limits"]["max_running"] is None
    assert me["secrets"] == {
        "hf_token": {"set": False, "updated_at": None},
        "wandb_api_key": {"set": False, "updated_at": None},
    }
    assert me["key"]["prefix"].startswith("ftq_") and "key_hash" not in me["key"]


def test_tokens_are_stored_encrypted_and_never_returned(client: TestClient, env: dict[str, str]) -> None:
    stored = client.put("/me/secrets", json={"hf_token": FAKE_HF, "wandb_api_key": FAKE_WANDB})

    assert stored.status_code == 200, stored.text
    assert stored.json()["hf_token"]["set"] is True and stored.json()["wandb_api_key"]["set"] is True
    assert FAKE_HF not in stored.text and FAKE_WANDB not in stored.text
    assert FAKE_HF not in client.get("/me").text
    with session_scope() as session:
        rows = session.scalars(select(UserSecret)).all()
        assert len(rows) == 2 and all(FAKE_HF not in r.ciphertext and FAKE_WANDB not in r.ciphertext for r in rows)
        user_id = rows[0].user_id
        assert read_secrets(session=session, settings=get_settings(), user_id=user_id) == {
            "hf_token": FAKE_HF,
            "wandb_api_key": FAKE_WANDB,
        }


def test_a_token_sent_as_null_is_deleted_and_one_left_out_is_kept(client: TestClient) -> None:
    client.put("/me/secrets", json={"hf_token": FAKE_HF, "wandb_api_key": FAKE_WANDB})

    after = client.put("/me/secrets", json={"hf_token": None}).json()

    assert after["hf_token"]["set"] is False
    assert after["wandb_api_key"]["set"] is True


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"hf_token": "x" * 5000}, "hf_token"),
        ({"github_token": FAKE_HF}, "github_token"),
        ({"hf_token": ""}, "hf_token"),
    ],
)
def test_a_bad_secrets_body_is_refused_without_echoing_it(client: TestClient, body: dict[str, Any], param: str) -> None:
    refused = client.put("/me/secrets", json=body)

    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == param
    assert FAKE_HF not in refused.text and "x" * 100 not in refused.text
    assert client.get("/me").json()["secrets"]["hf_token"]["set"] is False


@pytest.mark.parametrize(
    ("limits", "hyperparameters", "dataset", "limit", "param"),
    [
        ({"max_steps": 10}, {"max_steps": 11}, {}, "max_steps", "hyperparameters.max_steps"),
        ({"max_epochs": 1}, {"epochs": 2}, {}, "max_epochs", "hyperparameters.epochs"),
        ({"max_length": 128}, {"max_length": 182}, {}, "max_length", "hyperparameters.max_length"),
        ({"max_rows": 100}, {}, {"max_rows": 1000}, "max_rows", "dataset.max_rows"),
    ],
)
def test_a_spec_over_a_limit_is_a_422_naming_the_limit(
    client: TestClient,
    admin: TestClient,
    spec: dict[str, Any],
    limits: dict[str, Any],
    hyperparameters: dict[str, Any],
    dataset: dict[str, Any],
    limit: str,
    param: str,
) -> None:
    assert admin.patch("/users/tester", json={"limits": limits}).status_code == 200

    refused = client.post(
        "/jobs", json={**spec, "hyperparameters": hyperparameters, "dataset": {**spec["dataset"], **dataset}}
    )

    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["limit"], error["param"]) == ("limit_exceeded", limit, param)
    assert limit in error["message"]
    assert client.get("/jobs").json()["data"] == [], "nothing was stored"


def test_an_uploaded_dataset_over_the_row_limit_is_refused_at_submission(
    client: TestClient, admin: TestClient, spec: dict[str, Any]
) -> None:
    rows = b"".join(b'{"text": "item %d Price is $1.00"}\n' % n for n in range(5))
    file_id = client.post("/files", files={"file": ("rows.jsonl", rows)}).json()["id"]
    admin.patch("/users/tester", json={"limits": {"max_rows": 3}})

    refused = client.post("/jobs", json={**spec, "dataset": {"id": file_id}})
    capped = client.post("/jobs", json={**spec, "dataset": {"id": file_id, "max_rows": 3}})

    assert (refused.status_code, refused.json()["error"]["limit"]) == (422, "max_rows")
    assert capped.status_code == 201, capped.text


def test_max_queued_refuses_one_more_waiting_job_until_one_leaves(
    client: TestClient, admin: TestClient, spec: dict[str, Any]
) -> None:
    admin.patch("/users/tester", json={"limits": {"max_queued": 2}})
    first, _second = (client.post("/jobs", json=spec).json()["id"] for _ in range(2))

    refused = client.post("/jobs", json=spec)
    client.post(f"/jobs/{first}/cancel")
    accepted = client.post("/jobs", json=spec)

    assert refused.status_code == 422
    assert refused.json()["error"]["limit"] == "max_queued"
    assert accepted.status_code == 201


def test_the_rate_limit_answers_429_with_retry_after_and_spares_other_users(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    monkeypatch.setenv("FTQ_RATE_LIMIT", "6")  # one request per 10 s once the burst is spent
    monkeypatch.setenv("FTQ_RATE_BURST", "3")
    clear_caches()
    with client_for("alice") as alice, client_for("bob") as bob:
        answers = [alice.get("/me") for _ in range(4)]
        bobs = bob.get("/me")

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[-1].json()["error"]["code"] == "rate_limited"
    # One token a 10 s after the burst: the wait for the next one rounds up to 10 s.
    assert answers[-1].headers["Retry-After"] == "10"
    assert bobs.status_code == 200


def test_only_an_admin_lists_and_changes_users(client: TestClient, admin: TestClient) -> None:
    assert client.get("/users").status_code == 403
    assert client.patch("/users/tester", json={"priority": 5}).json()["error"]["code"] == "forbidden"

    changed = admin.patch("/users/tester", json={"priority": 5, "limits": {"max_running": 1}})

    assert changed.status_code == 200
    assert {u["name"]: u["priority"] for u in admin.get("/users").json()["data"]} == {"root": 0, "tester": 5}
    assert client.get("/me").json()["limits"]["max_running"] == 1
    assert admin.patch("/users/nobody", json={"priority": 1}).status_code == 404
    assert admin.patch("/users/tester", json={"priority": 5000}).json()["error"]["param"] == "priority"


def test_a_new_job_takes_its_owners_priority_and_an_admin_can_change_it(
    client: TestClient, admin: TestClient, spec: dict[str, Any]
) -> None:
    admin.patch("/users/tester", json={"priority": 3})
    first, second = (client.post("/jobs", json=spec).json()["id"] for _ in range(2))
    with session_scope() as session:
        for job_id in (first, second):
            pass_validation(session=session, job_id=job_id, stats={}, planned_steps=1, warnings=[])
        session.commit()
    before = {j["id"]: (j["priority"], j["queue_position"]) for j in client.get("/jobs").json()["data"]}

    assert client.patch(f"/jobs/{second}", json={"priority": 9}).status_code == 403
    raised = admin.patch(f"/jobs/{second}", json={"priority": 9})

    assert before == {first: (3, 1), second: (3, 2)}
    assert (raised.json()["priority"], raised.json()["queue_position"]) == (9, 1)
    assert client.get(f"/jobs/{first}").json()["queue_position"] == 2


@contextmanager
def revoked_after_a_poll(
    spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch, key_cache_ttl: str
) -> Iterator[tuple[TestClient, str]]:
    """A user's client and job, their key revoked right after it read the job (checked, and remembered if cached)."""
    monkeypatch.setenv("FTQ_KEY_CACHE_TTL", key_cache_ttl)
    clear_caches()
    with client_for("leaver") as leaver:
        job_id = leaver.post("/jobs", json=spec).json()["id"]
        assert leaver.get(f"/jobs/{job_id}").status_code == 200
        _revoke_key_of("leaver")
        yield leaver, job_id


def test_a_revoked_key_reads_until_its_cached_check_expires_but_writes_nothing(
    env: dict[str, str], spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The polled reads trust a key checked within `FTQ_KEY_CACHE_TTL` (here an hour); every other route checks it."""
    with revoked_after_a_poll(spec, monkeypatch, key_cache_ttl="3600") as (leaver, job_id):
        reads = [leaver.get(path).status_code for path in (f"/jobs/{job_id}", "/jobs", f"/jobs/{job_id}/events")]
        cancel = leaver.post(f"/jobs/{job_id}/cancel")
        me = leaver.get("/me")

    assert reads == [200, 200, 200]
    assert (cancel.status_code, cancel.json()["error"]["code"]) == (401, "unauthorized")
    assert me.status_code == 401


def test_with_no_key_cache_a_revoked_key_is_refused_by_the_reads_at_once(
    env: dict[str, str], spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with revoked_after_a_poll(spec, monkeypatch, key_cache_ttl="0") as (leaver, job_id):
        answer = leaver.get(f"/jobs/{job_id}")

    assert (answer.status_code, answer.json()["error"]["code"]) == (401, "unauthorized")


def _revoke_key_of(name: str) -> None:
    from shared.auth import list_api_keys, revoke_api_key

    with session_scope() as session:
        (key,) = [key for key in list_api_keys(session=session) if key.user.name == name]
        revoke_api_key(session=session, ref=key.id)
        session.commit()


def test_a_revoked_key_is_refused(env: dict[str, str]) -> None:
    from shared.auth import create_api_key, revoke_api_key

    with session_scope() as session:
        key, raw = create_api_key(session=session, name="leaver")
        session.commit()
        revoke_api_key(session=session, ref=key.prefix)
        session.commit()
    with client_for("someone") as other:
        answer = other.get("/me", headers={"Authorization": f"Bearer {raw}"})

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
