"""A job with an `evaluation` block ends with the course's price metrics for the fine-tune and the base model,
and every prediction, over HTTP (a real stack training the tiny model on the CPU)."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import stack_client
from tests.services import StackClient, wait_for_end
from worker.scoring import score_numeric

pytestmark = [pytest.mark.training, pytest.mark.redis]


@pytest.fixture(scope="module")
def evaluated(
    tmp_path_factory: pytest.TempPathFactory, local_root: Path, tiny_model: Path, train_file: Path
) -> Iterator[tuple[StackClient, dict[str, Any]]]:
    """A finished job that trained 4 steps, then scored itself and its base model on 8 rows."""
    with stack_client("sqlite", tmp_path_factory.mktemp("evaluation"), local_root) as client:
        spec = {
            "base_model": str(tiny_model),
            "dataset": {"id": str(train_file)},
            "hyperparameters": {"batch_size": 8, "max_length": 320, "max_steps": 4},
            "evaluation": {
                "dataset": {"id": str(train_file), "max_rows": 8},
                "max_new_tokens": 6,
                "batch_size": 4,
                "baseline": True,
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
