"""Cancel and resume against a running API and a real worker training in 4-bit on the CPU."""

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import trainer_pids, wait_for_end, wait_until

pytestmark = [pytest.mark.training, pytest.mark.redis]


def long_spec(tiny_model: Path, train_file: Path, **hyperparameters: Any) -> dict[str, Any]:
    """A job long enough to be interrupted."""
    hp = {"batch_size": 16, "max_length": 320, "logging_steps": 1, "epochs": 100.0, **hyperparameters}
    return {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}, "hyperparameters": hp}


def submit(api: httpx.Client, spec: dict[str, Any]) -> str:
    """POST a spec; return the job id."""
    response = api.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def step_of(api: httpx.Client, job_id: str) -> int:
    """The job's current step."""
    step: int = api.get(f"/jobs/{job_id}").json()["progress"]["step"]
    return step


def test_cancel_stops_a_running_job_at_the_next_step_and_its_process_exits(
    api: httpx.Client, tiny_model: Path, train_file: Path
) -> None:
    job_id = submit(api, long_spec(tiny_model, train_file, max_steps=500, save_steps=1000))
    wait_until(lambda: step_of(api, job_id) >= 2, what="training to start")

    response = api.post(f"/jobs/{job_id}/cancel")
    job = wait_for_end(api, job_id, timeout_s=60)

    assert response.json()["status"] == "cancelling"
    assert job["status"] == "cancelled"
    assert 2 <= job["progress"]["step"] < 500
    assert job["result"]["adapter_path"] is None
    wait_until(lambda: not trainer_pids(job_id), timeout_s=10, what="the trainer to exit")
    events = api.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    assert [e["data"]["status"] for e in events if e["type"] == "status"][-2:] == ["cancelling", "cancelled"]
    assert api.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_a_killed_trainer_resumes_from_its_last_complete_checkpoint(
    api: httpx.Client, tiny_model: Path, train_file: Path
) -> None:
    job_id = submit(api, long_spec(tiny_model, train_file, max_steps=24, save_steps=4))
    wait_until(lambda: bool(api.get(f"/jobs/{job_id}/checkpoints").json()["data"]), what="a first checkpoint")
    killed_at = step_of(api, job_id)
    for pid in trainer_pids(job_id):
        os.kill(pid, signal.SIGKILL)

    job = wait_for_end(api, job_id)

    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 2
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 24
    events = api.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    resumed = [e for e in events if e["type"] == "log" and e["message"].startswith("resuming from")]
    assert len(resumed) == 1
    resumed_step = int(resumed[0]["data"]["checkpoint"].rsplit("-", 1)[1])
    assert 4 <= resumed_step <= killed_at + 4
    assert any(e["type"] == "warning" and "attempt 1 lost" in e["message"] for e in events)
    # The resumed run continued the same optimizer/scheduler state: its log history starts where the first left off.
    final = Path(job["result"]["adapter_path"]).parent / "checkpoints" / "checkpoint-24" / "trainer_state.json"
    history = json.loads(final.read_text())["log_history"]
    steps = [entry["step"] for entry in history if "loss" in entry]
    assert steps == list(range(1, 25))
