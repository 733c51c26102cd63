"""The jobs API on SQLite and PostgreSQL, with the real Redis broker behind it."""

import asyncio
import gc
import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event, text, update
from sqlalchemy.exc import DBAPIError

from api.main import create_app
from shared.db import dispose_async_engines, get_async_engine, session_scope
from shared.models import Job, JobStatus


def queued_messages(redis_client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The Celery messages waiting in a Redis queue, decoded."""
    return [json.loads(raw) for raw in redis_client.lrange(queue, 0, -1)]


def job_count(client: TestClient) -> int:
    """How many jobs the API lists."""
    return len(client.get("/jobs", params={"limit": 100}).json()["data"])


def test_create_fills_course_defaults_and_enqueues_only_the_id_for_validation(
    client: TestClient, spec: dict[str, Any], redis_client: redis.Redis, queue_name: str
) -> None:
    response = client.post("/jobs", json=spec)

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "validating"
    assert job["id"].startswith("ftjob-")
    hp, lora, quant = job["spec"]["hyperparameters"], job["spec"]["lora"], job["spec"]["quantization"]
    assert (hp["max_length"], hp["batch_size"], hp["learning_rate"], hp["lr_scheduler"]) == (182, 16, 1e-4, "cosine")
    assert (hp["warmup_ratio"], hp["optimizer"], hp["save_steps"]) == (0.03, "paged_adamw_32bit", 5000)
    assert (lora["r"], lora["alpha"], lora["dropout"]) == (32, 64, 0.1)
    assert lora["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert quant == {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    assert job["spec"]["dataset"]["response_template"] == "Price is $"
    assert queued_messages(redis_client, queue_name) == [], "nothing reaches a GPU before validation"
    messages = queued_messages(redis_client, f"{queue_name}-validate")
    assert len(messages) == 1
    assert messages[0]["headers"]["task"] == "ftq.validate_job"
    assert messages[0]["headers"]["argsrepr"] == repr([job["id"]])


def test_created_job_reads_back_the_same(client: TestClient, spec: dict[str, Any]) -> None:
    created = client.post("/jobs", json={**spec, "metadata": {"team": "pricing"}}).json()

    read = client.get(f"/jobs/{created['id']}")

    assert read.status_code == 200
    assert read.json() == created
    assert read.json()["metadata"] == {"team": "pricing"}
    assert read.json()["progress"]["step"] == 0 and read.json()["error"] is None


def test_a_job_reads_the_same_from_a_write_route_a_poll_and_the_list(client: TestClient, spec: dict[str, Any]) -> None:
    """The writes show a job from its ORM row, the polled reads from plain rows of its shown columns: every field set,
    they must agree."""
    job_id = client.post("/jobs", json={**spec, "metadata": {"team": "pricing"}}).json()["id"]
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.running,
                started_at=datetime(2026, 12, 7, 8, 0),
                progress={"step": 3, "total_steps": 9, "loss": 1.5, "trained_tokens": 42},
                stats={"rows": 40, "tokens": 700},
                result={"trainable_params": 10},
                error_code="was_retried",
                error_message="an earlier attempt failed",
                error_param="dataset.id",
                attempt=2,
                worker="gpu0@box",
                preemptions=1,
                priority=4,
                wandb_url="https://wandb.example/run",
                wandb_dir="/tmp/run",
            )
        )
        session.commit()

    cancelling = client.post(f"/jobs/{job_id}/cancel").json()
    polled = client.get(f"/jobs/{job_id}").json()
    listed = client.get("/jobs").json()["data"][0]

    assert cancelling["status"] == "cancelling" and cancelling["worker"] == "gpu0@box"
    assert polled == cancelling
    assert listed == cancelling


def test_requests_without_a_valid_key_are_401(env: dict[str, str], spec: dict[str, Any]) -> None:
    with TestClient(create_app()) as anonymous:
        assert anonymous.get("/jobs").status_code == 401
        response = anonymous.post("/jobs", json=spec, headers={"Authorization": "Bearer ftq_not-a-key"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        (lambda s: s.pop("base_model"), "base_model"),
        (lambda s: s.update(colour="blue"), "colour"),
        (lambda s: s["dataset"].update(split_ratio=0.9), "dataset.split_ratio"),
        (lambda s: s.update(hyperparameters={"batch_size": "16"}), "hyperparameters.batch_size"),
        (lambda s: s.update(hyperparameters={"learning_rate": [0.1]}), "hyperparameters.learning_rate"),
        (lambda s: s.update(hyperparameters={"batch_size": 0}), "hyperparameters.batch_size"),
        (lambda s: s.update(hyperparameters={"max_length": 10_000_000}), "hyperparameters.max_length"),
        (lambda s: s.update(hyperparameters={"optimizer": "lion"}), "hyperparameters.optimizer"),
        (lambda s: s.update(lora={"r": 0}), "lora.r"),
        (lambda s: s.update(lora={"target_modules": []}), "lora.target_modules"),
        (lambda s: s.update(quantization={"bits": 8}), "quantization.bits"),
        (lambda s: s.update(base_model="not a model id!"), "base_model"),
        (lambda s: s.update(hub={"repo_id": "no-namespace"}), "hub.repo_id"),
        (lambda s: s.update(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    ],
)
def test_invalid_spec_is_422_naming_the_field_and_stores_nothing(
    client: TestClient, spec: dict[str, Any], change: Any, param: str
) -> None:
    body = json.loads(json.dumps(spec))
    change(body)

    response = client.post("/jobs", json=body)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["param"] == param
    assert param in {d["param"] for d in error["details"]}
    assert job_count(client) == 0


@pytest.mark.parametrize(
    ("field", "path", "code"),
    [
        ("base_model", "/etc", "path_not_allowed"),
        ("base_model", "{root}/../outside", "path_not_allowed"),
        ("base_model", "{root}/models/no-such-model", "model_not_found"),
        ("dataset.id", "/etc/passwd.jsonl", "path_not_allowed"),
        ("dataset.id", "{root}/data/missing.jsonl", "dataset_not_found"),
        ("dataset.id", "{root}/models/tiny-llama/model.safetensors", "unsupported_format"),
    ],
)
def test_local_paths_outside_roots_or_missing_are_422(
    client: TestClient, spec: dict[str, Any], local_root: Path, field: str, path: str, code: str
) -> None:
    value = path.format(root=local_root)
    if field == "base_model":
        spec["base_model"] = value
    else:
        spec["dataset"]["id"] = value

    response = client.post("/jobs", json=spec)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["param"] == field
    assert job_count(client) == 0


def test_symlink_escaping_the_root_is_refused(client: TestClient, spec: dict[str, Any], local_root: Path) -> None:
    link = local_root / "data" / "escape.jsonl"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/hostname")
    spec["dataset"]["id"] = str(link)

    response = client.post("/jobs", json=spec)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "path_not_allowed"


def test_list_pages_newest_first_without_gaps(client: TestClient, spec: dict[str, Any]) -> None:
    created = [client.post("/jobs", json=spec).json()["id"] for _ in range(5)]

    seen, after = [], None
    while True:
        page = client.get("/jobs", params={"limit": 2, **({"after": after} if after else {})}).json()
        seen += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]

    assert seen == list(reversed(created))


def test_list_filters_by_status(client: TestClient, spec: dict[str, Any]) -> None:
    client.post("/jobs", json=spec)

    assert len(client.get("/jobs", params={"status": "validating"}).json()["data"]) == 1
    assert client.get("/jobs", params={"status": "running"}).json() == {"object": "list", "data": [], "has_more": False}
    assert client.get("/jobs", params={"status": "exploded"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).json()["error"]["param"] == "limit"


def test_paging_after_an_unknown_job_is_422_naming_after(client: TestClient) -> None:
    response = client.get("/jobs", params={"after": "ftjob-000000000000000000000000"})

    assert response.status_code == 422
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("invalid_cursor", "after")


def test_unknown_job_is_404(client: TestClient) -> None:
    response = client.get("/jobs/ftjob-000000000000000000000000")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_unreachable_broker_is_503_and_the_job_is_marked_failed(
    client: TestClient, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import clear_caches

    monkeypatch.setenv("BROKER_URL", "redis://127.0.0.1:1/0")
    clear_caches()

    response = client.post("/jobs", json=spec)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "queue_unavailable"
    jobs = client.get("/jobs").json()["data"]
    assert [(j["status"], j["error"]["code"]) for j in jobs] == [("failed", "queue_unavailable")]


def test_healthz_and_openapi_describe_every_spec_field(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    for name in ("JobSpec", "Hyperparameters", "LoraSpec", "QuantizationSpec", "DatasetSpec", "HubSpec", "WandbSpec"):
        for field, schema in schemas[name]["properties"].items():
            assert schema.get("description"), f"{name}.{field} has no description"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"metadata": {"team": "a\x00b"}}, "metadata"),
        ({"dataset": {"id": "x", "split": "tr\x00ain"}}, "dataset.split"),
    ],
)
def test_a_nul_character_in_a_spec_is_a_422_on_its_field(
    client: TestClient, spec: dict[str, Any], change: dict[str, Any], param: str
) -> None:
    response = client.post("/jobs", json={**spec, **change})

    assert response.status_code == 422
    assert response.json()["error"]["param"] == param
    assert client.get("/jobs").json()["data"] == []


@pytest.mark.parametrize("path", ["/jobs/a%00b", "/jobs/a b", "/jobs/" + "x" * 65, "/files/a%00b"])
def test_an_id_that_cannot_be_ours_is_a_422_naming_it(client: TestClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 422
    assert response.json()["error"]["param"] in ("job_id", "file_id")


def test_numbers_beyond_the_database_are_refused_not_crashed_on(client: TestClient, spec: dict[str, Any]) -> None:
    job_id = client.post("/jobs", json=spec).json()["id"]

    step = client.get(f"/jobs/{job_id}/checkpoints/{2**40}/download")
    after = client.get(f"/jobs/{job_id}/events", params={"after": 2**70})
    resume = client.get(f"/jobs/{job_id}/events/stream", headers={"Last-Event-ID": str(2**70)})

    assert [r.status_code for r in (step, after, resume)] == [422, 422, 422]
    assert [r.json()["error"]["param"] for r in (step, after, resume)] == ["step", "after", "last-event-id"]


def test_an_evaluation_dataset_outside_the_roots_is_a_422_on_its_field(
    client: TestClient, spec: dict[str, Any]
) -> None:
    response = client.post("/jobs", json={**spec, "evaluation": {"dataset": {"id": "/etc/passwd.jsonl"}}})

    assert response.status_code == 422
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (
        "path_not_allowed",
        "evaluation.dataset.id",
    )


def test_a_job_without_an_evaluation_has_none_to_show(client: TestClient, spec: dict[str, Any]) -> None:
    job_id = client.post("/jobs", json=spec).json()["id"]

    response = client.get(f"/jobs/{job_id}/evaluation")

    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_polls_are_answered_while_every_api_thread_is_taken(client: TestClient, spec: dict[str, Any]) -> None:
    """Reading a job, the job list, a job's events and its checkpoints runs on the event loop, so sync routes that
    hold their thread (a dry run waiting on a validation worker, a slow upload) cannot make polls wait behind them."""
    job_id = client.post("/jobs", json=spec).json()["id"]
    assert client.portal is not None
    limiter = client.portal.call(anyio.to_thread.current_default_thread_limiter)
    borrowers = [object() for _ in range(int(limiter.total_tokens))]
    answers: list[int] = []

    def poll() -> None:
        for path in (f"/jobs/{job_id}", "/jobs", f"/jobs/{job_id}/events", f"/jobs/{job_id}/checkpoints"):
            answers.append(client.get(path).status_code)

    for borrower in borrowers:
        client.portal.call(limiter.acquire_on_behalf_of, borrower)
    try:
        poller = threading.Thread(target=poll)
        poller.start()
        poller.join(timeout=30)
        answered_while_taken = not poller.is_alive()
    finally:
        for borrower in borrowers:
            client.portal.call(limiter.release_on_behalf_of, borrower)
    poller.join()

    assert answered_while_taken, "a poll waited for a worker thread"
    assert answers == [200, 200, 200, 200]


def test_a_burst_of_polls_larger_than_the_read_pool_takes_turns_on_its_connections(
    client: TestClient, spec: dict[str, Any]
) -> None:
    """More polls at once than the read pool holds wait for its connections instead of opening more: opening extra
    connections for a burst and closing them after it had cost polls most of their p99 under 32 clients. (Polls of
    the job list: polls of one job while it is read share that read.)"""
    client.post("/jobs", json=spec)
    pool = get_async_engine().pool
    opened: list[object] = []

    def count(dbapi_connection: object, _record: object) -> None:
        opened.append(dbapi_connection)

    event.listen(pool, "connect", count)

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ftq", headers=client.headers) as polls:
            answers = await asyncio.gather(*(polls.get("/jobs") for _ in range(2 * pool.size())))
        return [answer.status_code for answer in answers]

    assert client.portal is not None
    try:
        answers = client.portal.call(burst)
    finally:
        event.remove(pool, "connect", count)

    assert answers == [200] * (2 * pool.size())
    assert 0 < len(opened) <= pool.size()


def test_the_api_freezes_what_it_holds_at_startup_out_of_the_garbage_collector(env: dict[str, str]) -> None:
    gc.unfreeze()

    with TestClient(create_app()) as client:
        assert client.get("/healthz").status_code == 200
        frozen = gc.get_freeze_count()
    gc.unfreeze()

    assert frozen > 10_000  # the app's modules and objects, not a handful


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_polled_reads_hold_no_transaction_open_and_cannot_write(database_url: str) -> None:
    """On PostgreSQL the read routes' engine runs each statement in a transaction of its own (a poll holds none open)
    on connections the server keeps read-only, so a write slipped into a read route fails instead of committing."""

    async def probe() -> tuple[datetime, datetime, str]:
        async with get_async_engine(database_url).connect() as connection:
            first = (await connection.execute(text("SELECT now()"))).scalar_one()
            await asyncio.sleep(0.01)
            second = (await connection.execute(text("SELECT now()"))).scalar_one()  # a transaction's start time
            try:
                await connection.execute(
                    text(
                        "INSERT INTO users (id, name, is_admin, priority, limits, created_at)"
                        " VALUES ('u-probe', 'probe', false, 0, '{}', now())"
                    )
                )
                refused = ""
            except DBAPIError as exc:
                refused = str(exc.orig)
        await dispose_async_engines()
        return first, second, refused

    first, second, refused = asyncio.run(probe())

    assert second > first
    assert "read-only transaction" in refused
    with session_scope(database_url) as session:
        assert session.scalar(text("SELECT count(*) FROM users WHERE id = 'u-probe'")) == 0
