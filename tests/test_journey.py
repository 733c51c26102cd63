"""One job through every state over HTTP, on PostgreSQL and Redis, as a user's script would see it:
a validation failure first, then a dry run, queued, running with the event stream open, a checkpoint
downloaded, the worker killed, the job resumed on a new worker, and cancelled."""

import io
import tarfile
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import StackClient, read_sse, wait_for_end, wait_until

pytestmark = [pytest.mark.training, pytest.mark.redis, pytest.mark.postgres]


def stream_in_background(api: StackClient, job_id: str) -> tuple[threading.Thread, list[Any]]:
    """Follow a job's event stream on its own connection until the stream ends."""
    received: list[Any] = []

    def follow() -> None:
        with httpx.Client(base_url=api.base_url, headers=dict(api.headers), timeout=60) as own:
            received.extend(read_sse(own, f"/jobs/{job_id}/events/stream"))

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread, received


def job(api: StackClient, job_id: str) -> dict[str, Any]:
    """The job as the API shows it now."""
    body: dict[str, Any] = api.get(f"/jobs/{job_id}").json()
    return body


def test_a_job_goes_through_every_state_and_the_stream_tells_it_all(
    pg_api: StackClient, tiny_model: Path, train_file: Path
) -> None:
    api = pg_api
    spec: dict[str, Any] = {
        "base_model": str(tiny_model),
        "dataset": {"id": str(train_file)},
        "hyperparameters": {"batch_size": 8, "max_length": 320, "max_steps": 200, "save_steps": 3, "logging_steps": 1},
        "wandb": {"project": "pricer"},
    }

    bad = api.post("/jobs", json={**spec, "dataset": {"id": str(train_file), "response_template": "Cost: $"}})
    assert wait_for_end(api, bad.json()["id"])["error"]["code"] == "template_missing"

    plan = api.post("/jobs", params={"dry_run": "true"}, json=spec).json()
    assert plan["planned_steps"] == 200 and plan["stats"]["rows"] == 48

    job_id = api.post("/jobs", json=spec).json()["id"]
    stream, received = stream_in_background(api, job_id)
    wait_until(lambda: bool(api.get(f"/jobs/{job_id}/checkpoints").json()["data"]), what="a checkpoint")
    first = api.get(f"/jobs/{job_id}/checkpoints").json()["data"][0]
    archive = tarfile.open(fileobj=io.BytesIO(api.get(first["download_url"]).content), mode="r:gz")
    assert any(name.endswith("adapter_model.safetensors") for name in archive.getnames())

    api.stack.kill_worker()
    wait_until(lambda: job(api, job_id)["status"] == "queued", timeout_s=30, what="the lease to expire")
    assert job(api, job_id)["queue_position"] == 1
    api.stack.restart_worker()
    wait_until(lambda: job(api, job_id)["attempt"] == 2 and job(api, job_id)["progress"]["step"] > first["step"])
    assert api.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    final = wait_for_end(api, job_id, timeout_s=60)
    stream.join(timeout=30)

    assert final["status"] == "cancelled" and final["attempt"] == 2
    streamed_statuses = [data["data"]["status"] for _id, kind, data in received if kind == "status"]
    assert streamed_statuses == ["validating", "queued", "running", "queued", "running", "cancelling", "cancelled"]
    kinds = {kind for _id, kind, _data in received}
    assert {"progress", "checkpoint", "wandb", "log", "end"} <= kinds
    logged = api.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    assert [int(i) for i, _kind, _data in received[:-1]] == [e["id"] for e in logged]
    assert [e["data"]["run_id"] for e in logged if e["type"] == "wandb"] == [job_id, job_id], "one W&B run"
    assert any(e["type"] == "log" and e["message"].startswith("resuming from checkpoint-") for e in logged)
