"""Cancel, resume, drain and W&B against a running API and a real worker training in 4-bit on the CPU, on
PostgreSQL (the team setup; SQLite runs the core path in test_end_to_end.py)."""

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.services import StackClient, trainer_pids, wait_for_end, wait_until
from tests.wandb_files import read_run

pytestmark = [pytest.mark.training, pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture(scope="module")
def api(pg_api: StackClient) -> StackClient:
    """This module's stack: PostgreSQL."""
    return pg_api


def long_spec(tiny_model: Path, train_file: Path, **hyperparameters: Any) -> dict[str, Any]:
    """A job long enough to be interrupted."""
    hp = {"batch_size": 8, "max_length": 320, "logging_steps": 1, "epochs": 100.0, **hyperparameters}
    return {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}, "hyperparameters": hp}


def submit(api: StackClient, spec: dict[str, Any]) -> str:
    """POST a spec; return the job id."""
    response = api.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def step_of(api: StackClient, job_id: str) -> int:
    """The job's current step."""
    step: int = api.get(f"/jobs/{job_id}").json()["progress"]["step"]
    return step


def test_cancel_stops_a_running_job_at_the_next_step_and_its_process_exits(
    api: StackClient, tiny_model: Path, train_file: Path
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
    api: StackClient, tiny_model: Path, train_file: Path
) -> None:
    job_id = submit(api, long_spec(tiny_model, train_file, max_steps=12, save_steps=3))
    wait_until(lambda: bool(api.get(f"/jobs/{job_id}/checkpoints").json()["data"]), what="a first checkpoint")
    killed_at = step_of(api, job_id)
    for pid in trainer_pids(job_id):
        os.kill(pid, signal.SIGKILL)

    job = wait_for_end(api, job_id)

    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 2
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 12
    events = api.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    resumed = [e for e in events if e["type"] == "log" and e["message"].startswith("resuming from")]
    assert len(resumed) == 1
    resumed_step = int(resumed[0]["data"]["checkpoint"].rsplit("-", 1)[1])
    assert 3 <= resumed_step <= killed_at + 3
    assert any(e["type"] == "warning" and "attempt 1 lost" in e["message"] for e in events)
    # The resumed run continued the same optimizer/scheduler state: its log history starts where the first left off.
    final = Path(job["result"]["adapter_path"]).parent / "checkpoints" / "checkpoint-12" / "trainer_state.json"
    history = json.loads(final.read_text())["log_history"]
    steps = [entry["step"] for entry in history if "loss" in entry]
    assert steps == list(range(1, 13))


def test_wandb_run_is_offline_without_a_key_and_holds_the_spec_and_every_logged_loss(
    api: StackClient, tiny_model: Path, train_file: Path
) -> None:
    spec = long_spec(tiny_model, train_file, max_steps=4, save_steps=100)
    spec["wandb"] = {"project": "pricer", "entity": "team", "run_name": "tiny-pricer", "tags": ["ci", "qlora"]}

    job = wait_for_end(api, submit(api, spec))

    assert job["status"] == "succeeded", job["error"]
    assert job["wandb_url"] is None and job["wandb_dir"]
    events = api.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    (wandb_event,) = [e for e in events if e["type"] == "wandb"]
    assert wandb_event["data"] == {"run_id": job["id"], "url": None, "dir": job["wandb_dir"], "mode": "offline"}
    run = read_run(Path(job["wandb_dir"]))
    assert (run["project"], run["entity"], run["name"], run["tags"]) == (
        "pricer",
        "team",
        "tiny-pricer",
        ["ci", "qlora"],
    )
    assert run["config"]["ftq"]["spec"]["lora"]["r"] == 32
    logged = {row["train/global_step"]: row["train/loss"] for row in run["history"] if "train/loss" in row}
    losses = {e["data"]["step"]: e["data"]["loss"] for e in events if e["type"] == "progress"}
    assert logged == pytest.approx(losses) and sorted(logged) == [1, 2, 3, 4]


def test_sigterm_drains_the_worker_the_job_resumes_elsewhere_without_spending_an_attempt(
    api: StackClient, tiny_model: Path, train_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submit(api, long_spec(tiny_model, train_file, max_steps=20, save_steps=1000))
    wait_until(lambda: step_of(api, job_id) >= 2, what="training to start")

    exit_code = api.stack.terminate_worker()
    drained = api.get(f"/jobs/{job_id}").json()
    checkpoints = api.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    api.stack.restart_worker()
    job = wait_for_end(api, job_id)

    assert exit_code == 0
    assert (drained["status"], drained["attempt"]) == ("queued", 1)
    assert len(checkpoints) == 1 and 2 <= checkpoints[0]["step"] < 20, "the drain saved where it stopped"
    assert job["status"] == "succeeded" and job["progress"]["step"] == 20
    assert (job["attempt"], job["preemptions"]) == (2, 1), "the drained attempt is not counted as a failure"
    events = api.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    assert any(e["message"] == f"resuming from checkpoint-{checkpoints[0]['step']}" for e in events)
    assert any("worker is shutting down" in e["message"] for e in events if e["type"] == "status")
