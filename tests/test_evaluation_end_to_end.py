"""A job with an `evaluation` block ends with the course's price metrics for the fine-tune and the base model,
and every prediction, over HTTP (a real stack training the tiny model on the CPU); `ftq eval` scores the saved
adapter again, and the base model alone, as jobs of kind `evaluation`."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import user_of
from tests.services import StackClient, wait_for_end
from worker.scoring import score_numeric

pytestmark = [pytest.mark.training, pytest.mark.redis]


@pytest.fixture(scope="module")
def evaluated(
    shared_stack: StackClient, tiny_model: Path, train_file: Path
) -> Iterator[tuple[StackClient, dict[str, Any]]]:
    """A finished job that trained 4 steps (scoring its checkpoint at step 2), then scored itself and its base model
    on 8 rows."""
    with user_of(shared_stack, "evaluator") as client:
        spec = {
            "base_model": str(tiny_model),
            "dataset": {"id": str(train_file)},
            "hyperparameters": {"batch_size": 8, "max_length": 320, "max_steps": 4, "save_steps": 2},
            "evaluation": {
                "dataset": {"id": str(train_file), "max_rows": 8},
                "max_new_tokens": 6,
                "batch_size": 4,
                "baseline": True,
                "at_checkpoints": True,
            },
        }
        created = client.post("/jobs", json=spec)
        assert created.status_code == 201, created.text
        yield client, wait_for_end(client, created.json()["id"])


def test_the_job_ends_with_scores_for_the_fine_tune_and_the_base_model(
    evaluated: tuple[StackClient, dict[str, Any]],
) -> None:
    client, job = evaluated

    scores = client.get(f"/jobs/{job['id']}/evaluation")

    assert job["status"] == "succeeded", job["error"]
    assert scores.status_code == 200, scores.text
    body = scores.json()
    assert (body["metric"], body["rows"]) == ("numeric", 8)
    assert 0 <= body["unparsable"] <= 8 and 0.0 <= body["hit_rate"] <= 1.0
    assert body["baseline"]["rows"] == 8
    assert job["result"]["evaluation"]["rows"] == 8


def test_every_prediction_is_downloadable_and_the_scores_follow_from_them(
    evaluated: tuple[StackClient, dict[str, Any]],
) -> None:
    client, job = evaluated

    download = client.get(f"/jobs/{job['id']}/evaluation/predictions")
    rows = [json.loads(line) for line in download.text.splitlines()]
    scores = client.get(f"/jobs/{job['id']}/evaluation").json()

    assert download.status_code == 200 and download.headers["content-type"].startswith("application/x-ndjson")
    assert [row["row"] for row in rows] == list(range(8))
    assert all(isinstance(row["truth"], float) and row["grade"] in ("hit", "near", "miss") for row in rows)
    assert all(row["baseline_grade"] in ("hit", "near", "miss") for row in rows)
    recomputed = score_numeric((row["truth"], row["prediction"]) for row in rows).as_dict()
    assert {k: scores[k] for k in recomputed} == recomputed
    base = score_numeric((row["truth"], row["baseline_prediction"]) for row in rows).as_dict()
    assert scores["baseline"] == base


def test_the_evaluation_is_told_in_the_events(evaluated: tuple[StackClient, dict[str, Any]]) -> None:
    client, job = evaluated

    messages = [e["message"] for e in client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]]

    assert "evaluating on 8 rows" in messages and "evaluation done" in messages
    assert [m for m in messages if m.startswith("evaluating the ")] == [
        "evaluating the checkpoint 2: 4/8 answered",
        "evaluating the checkpoint 2: 8/8 answered",
        "evaluating the fine-tune: 4/8 answered",
        "evaluating the fine-tune: 8/8 answered",
        "evaluating the base model: 4/8 answered",
        "evaluating the base model: 8/8 answered",
    ]


def test_the_course_charts_are_served_as_png(evaluated: tuple[StackClient, dict[str, Any]]) -> None:
    client, job = evaluated

    urls = client.get(f"/jobs/{job['id']}/evaluation").json()["chart_urls"]
    charts = [client.get(url) for url in urls]
    unknown = client.get(f"/jobs/{job['id']}/evaluation/charts/secret.png")

    assert [url.rsplit("/", 1)[1] for url in urls] == ["scatter.png", "error-by-band.png"]
    assert all(c.status_code == 200 and c.headers["content-type"] == "image/png" for c in charts)
    assert all(c.content.startswith(b"\x89PNG") and len(c.content) > 5000 for c in charts)
    assert unknown.status_code == 404


def test_a_checkpoint_is_scored_when_asked(evaluated: tuple[StackClient, dict[str, Any]]) -> None:
    client, job = evaluated

    checkpoints = client.get(f"/jobs/{job['id']}/checkpoints").json()["data"]

    by_step = {c["step"]: c["metrics"] for c in checkpoints}
    assert sorted(by_step) == [2, 4]
    assert by_step[2]["eval_unparsable"] is not None and 0 <= by_step[2]["eval_hit_rate"] <= 1
    assert "eval_hit_rate" not in by_step[4], "the final step is scored by the evaluation after training"


def ftq_eval(client: StackClient, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `ftq eval` as a user would, with the stack's URL and the client's key in the environment."""
    key = client.headers["Authorization"].split()[1]
    env = {**os.environ, "FTQ_URL": str(client.base_url), "FTQ_API_KEY": key, "XDG_CONFIG_HOME": "/nonexistent"}
    command = [sys.executable, "-m", "ftq.cli", "eval", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def predictions(client: StackClient, job_id: str) -> list[dict[str, Any]]:
    """A job's evaluation rows, as served."""
    return [json.loads(line) for line in client.get(f"/jobs/{job_id}/evaluation/predictions").text.splitlines()]


@pytest.fixture(scope="module")
def rescored(
    evaluated: tuple[StackClient, dict[str, Any]], train_file: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`ftq eval --wait` of the finished job's saved adapter (and its base model) on the same 8 rows, and a job
    scoring the base model alone submitted beside it."""
    client, job = evaluated
    settings = ["--dataset", str(train_file), "--max-rows", "8", "--max-new-tokens", "6", "--batch-size", "4"]
    base_only = client.post(
        "/jobs",
        json={
            "kind": "evaluation",
            "base_model": job["spec"]["base_model"],
            "evaluation": {"dataset": {"id": str(train_file), "max_rows": 8}, "max_new_tokens": 6, "batch_size": 4},
        },
    )
    assert base_only.status_code == 201, base_only.text
    run = ftq_eval(client, "--adapter", job["id"], "--baseline", *settings, "--wait")
    return run, wait_for_end(client, base_only.json()["id"])


def test_ftq_eval_scores_the_saved_adapter_exactly_as_the_job_did(
    evaluated: tuple[StackClient, dict[str, Any]], rescored: tuple[subprocess.CompletedProcess[str], dict[str, Any]]
) -> None:
    client, job = evaluated
    run, _ = rescored

    assert run.returncode == 0, run.stderr
    submitted, outcome = run.stdout.splitlines()[0], run.stdout.splitlines()[-1]
    eval_job = client.get(f"/jobs/{submitted.split()[-1]}").json()
    assert eval_job["spec"]["kind"] == "evaluation" and eval_job["spec"]["adapter"] == job["id"]
    assert eval_job["spec"]["base_model"] == job["spec"]["base_model"], "the base model came from the adapter's job"
    assert eval_job["progress"]["step"] == eval_job["progress"]["total_steps"] == 16, "8 answers for each model"
    assert outcome.startswith("succeeded") and "fine-tune: MAE" in outcome and "; base model: MAE" in outcome
    again, first = predictions(client, eval_job["id"]), predictions(client, job["id"])
    assert all(r["answer"] and r["baseline_answer"] for r in first), "every row has generated text to compare"
    assert [(r["answer"], r["baseline_answer"]) for r in again] == [(r["answer"], r["baseline_answer"]) for r in first]
    assert client.get(f"/jobs/{eval_job['id']}/evaluation").json()["model"] == "fine-tune"


def test_the_base_model_alone_answers_as_it_did_under_the_adapter(
    evaluated: tuple[StackClient, dict[str, Any]], rescored: tuple[subprocess.CompletedProcess[str], dict[str, Any]]
) -> None:
    client, job = evaluated
    _, base_only = rescored

    scores = client.get(f"/jobs/{base_only['id']}/evaluation").json()

    assert base_only["status"] == "succeeded", base_only["error"]
    assert (scores["model"], scores["rows"], scores["baseline"]) == ("base model", 8, None)
    base_answers = [r["answer"] for r in predictions(client, base_only["id"])]
    assert base_answers == [r["baseline_answer"] for r in predictions(client, job["id"])]
