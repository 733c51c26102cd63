"""One job on two GPUs of a box, end to end on the shared stack with a second training worker: `gpu0` and `gpu1` on
this CPU box, where the job's two ranks train data-parallel over gloo as they would over NCCL on GPUs.

The scenario runs once (the `scenario` fixture): a two-GPU job (logging to an offline W&B run) and the same job on
one GPU submitted right after it; then a two-GPU job whose rank 1 is killed, which resumes on a second attempt and
is cancelled there. Each test checks one promise.
"""

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import user_of
from tests.services import StackClient, trainer_pids, wait_for_end, wait_until
from tests.wandb_files import read_run

pytestmark = [pytest.mark.training, pytest.mark.redis]


@dataclass
class Scenario:
    """What the scenario did and saw."""

    api: StackClient
    two_gpus: dict[str, Any]
    one_gpu: dict[str, Any]
    cancelled: dict[str, Any]
    holders_while_training: dict[str, str | None]
    ranks_while_training: int
    ranks_after_cancel: list[int] = field(default_factory=list)
    checkpoint_before_kill: int = 0


def job_spec(spec: dict[str, Any], gpus: int, steps: int) -> dict[str, Any]:
    """The tiny model on the bundled rows (long enough for its tokenizer), `steps` steps of 16 rows on `gpus` GPUs."""
    hyperparameters = {"max_steps": steps, "save_steps": 2, "logging_steps": 1, "max_length": 512}
    return {**spec, "hyperparameters": hyperparameters, "resources": {"gpus": gpus}}


def submit(api: StackClient, body: dict[str, Any]) -> str:
    """POST a job; its id."""
    response = api.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def holders(api: StackClient) -> dict[str, str | None]:
    """Each worker's current job, by worker name."""
    workers = api.get("/workers").json()["data"]
    return {w["name"]: (w["current_job"] or {}).get("id") for w in workers if w["kind"] == "gpu"}


@pytest.fixture(scope="module")
def scenario(shared_stack: StackClient, tiny_model: Path, train_file: Path) -> Iterator[Scenario]:
    """Run the scenario on the shared SQLite stack with a second training worker beside its first, as a user of its
    own."""
    spec = {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}}
    with shared_stack.stack.added_gpu_worker("1"), user_of(shared_stack, "multi-gpu") as api:
        wait_until(lambda: len(holders(api)) == 2, what="both training workers registered")
        two = submit(api, {**job_spec(spec, gpus=2, steps=4), "wandb": {"project": "pricer"}})
        one = submit(api, job_spec(spec, gpus=1, steps=4))
        wait_until(lambda: len(trainer_pids(two)) == 2, what="both ranks of the two-GPU job started")
        seen_holders, seen_ranks = holders(api), len(trainer_pids(two))
        two_gpus, one_gpu = wait_for_end(api, two), wait_for_end(api, one)

        long = submit(api, job_spec(spec, gpus=2, steps=10_000))
        wait_until(lambda: bool(checkpoints(api, long)), what="a checkpoint of the long job")
        saved = checkpoints(api, long)[-1]
        os.kill(rank_pid(long, rank=1), signal.SIGKILL)
        wait_until(lambda: step_of(api, long, attempt=2) > saved, what="the second attempt training")
        assert api.post(f"/jobs/{long}/cancel").status_code == 200
        cancelled = wait_for_end(api, long)
        try:  # the ranks exit once rank 0 has recorded the cancel
            wait_until(lambda: not trainer_pids(long), timeout_s=30, what="every rank gone")
        except TimeoutError:
            pass
        left = trainer_pids(long)
        yield Scenario(api, two_gpus, one_gpu, cancelled, seen_holders, seen_ranks, left, saved)


def checkpoints(api: StackClient, job_id: str) -> list[int]:
    """The steps of a job's recorded checkpoints."""
    return [c["step"] for c in api.get(f"/jobs/{job_id}/checkpoints").json()["data"]]


def step_of(api: StackClient, job_id: str, attempt: int) -> int:
    """The job's step as reported by `attempt` (0 while another attempt, or none, runs)."""
    job = api.get(f"/jobs/{job_id}").json()
    return int(job["progress"].get("step", 0)) if job["attempt"] == attempt and job["status"] == "running" else 0


def rank_pid(job_id: str, rank: int) -> int:
    """The process of one rank of a job."""
    for pid in trainer_pids(job_id):
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return pid
    raise AssertionError(f"no rank {rank} of {job_id} is running")


def events(api: StackClient, job_id: str) -> list[dict[str, Any]]:
    """Every event of a job."""
    return list(api.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"])


def losses(api: StackClient, job_id: str) -> list[float]:
    """The loss logged at each step."""
    return [e["data"]["loss"] for e in events(api, job_id) if e["type"] == "progress"]


def test_a_two_gpu_job_holds_both_workers_and_trains_on_two_ranks(scenario: Scenario) -> None:
    job_id = scenario.two_gpus["id"]
    messages = [e["message"] for e in events(scenario.api, job_id)]

    assert scenario.two_gpus["status"] == "succeeded", scenario.two_gpus["error"]
    assert set(scenario.holders_while_training.values()) == {job_id}
    assert scenario.ranks_while_training == 2
    assert any(m.startswith("running (attempt 1 on ") and m.count("@") == 2 for m in messages)
    assert any("micro-batch 8 x 1 on each of 2 GPUs" in m for m in messages)


def test_rank_zero_alone_reports_progress_and_checkpoints(scenario: Scenario) -> None:
    job_id = scenario.two_gpus["id"]
    checkpoints = scenario.api.get(f"/jobs/{job_id}/checkpoints").json()["data"]

    assert len(losses(scenario.api, job_id)) == 4  # one event a logged step, not one per rank
    assert [c["step"] for c in checkpoints] == [2, 4]
    assert scenario.two_gpus["progress"]["step"] == scenario.two_gpus["progress"]["total_steps"] == 4
    assert scenario.two_gpus["result"]["adapter_path"]


def test_the_same_job_on_one_gpu_learns_the_same_losses(scenario: Scenario) -> None:
    two, one = losses(scenario.api, scenario.two_gpus["id"]), losses(scenario.api, scenario.one_gpu["id"])

    assert scenario.one_gpu["status"] == "succeeded"
    assert two == pytest.approx(one, abs=1e-3)
    assert scenario.two_gpus["progress"]["trained_tokens"] == scenario.one_gpu["progress"]["trained_tokens"]


def test_a_one_gpu_job_waits_while_both_gpus_are_held(scenario: Scenario) -> None:
    assert scenario.one_gpu["started_at"] >= scenario.two_gpus["finished_at"]


def test_a_killed_rank_stops_the_others_and_the_job_resumes_from_its_checkpoint(scenario: Scenario) -> None:
    job = scenario.cancelled
    messages = [e["message"] for e in events(scenario.api, job["id"])]

    assert job["attempt"] == 2
    assert any("attempt 1 lost (training process exited with code 137)" in m for m in messages)
    assert f"resuming from checkpoint-{scenario.checkpoint_before_kill}" in messages


def test_a_cancel_stops_every_rank(scenario: Scenario) -> None:
    assert scenario.cancelled["status"] == "cancelled"
    assert scenario.ranks_after_cancel == []


def test_rank_zero_alone_logs_to_wandb(scenario: Scenario) -> None:
    job = scenario.two_gpus
    run = read_run(Path(job["wandb_dir"]))

    logged = {row["train/global_step"]: row["train/loss"] for row in run["history"] if "train/loss" in row}
    assert sorted(logged) == [1, 2, 3, 4]
    assert list(logged.values()) == pytest.approx(losses(scenario.api, job["id"]))
    assert len(list(Path(job["wandb_dir"]).parent.glob("offline-run-*"))) == 1  # no run from rank 1
