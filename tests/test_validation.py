"""Validation before queueing: planned steps, sampled statistics, and the failure codes for bad data."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.errors import FtqError, JobFailure
from shared.spec import Hyperparameters, JobSpec
from tests.conftest import REPO
from worker.validation import planned_steps, validate

TRAINING_STACK = ("peft", "trl", "bitsandbytes", "accelerate", "wandb")


def test_a_validation_worker_loads_the_tokenizer_stack_without_the_training_stack() -> None:
    # What a validation pool process imports (its warm-up, then the task): PEFT, TRL, bitsandbytes and W&B would
    # cost seconds at every start and hundreds of megabytes while it lives.
    probe = (
        "import sys, worker.tasks, worker.credentials, worker.validation; "
        f"print(' '.join(m for m in {TRAINING_STACK!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == []


@pytest.mark.parametrize(
    ("rows", "hp", "steps"),
    [
        (48, {"batch_size": 16}, 3),
        (49, {"batch_size": 16}, 4),
        (400_000, {}, 25_000),  # the course: 400k rows at batch 16, one epoch
        (100, {"batch_size": 8, "gradient_accumulation_steps": 4}, 4),
        (100, {"batch_size": 10, "epochs": 2.5}, 25),
        (100, {"max_steps": 7}, 7),
    ],
)
def test_planned_steps_count_like_the_trainer(rows: int, hp: dict[str, Any], steps: int) -> None:
    assert planned_steps(rows, Hyperparameters.model_validate(hp)) == steps


def spec_for(model: Path, data: Path, **hp: Any) -> JobSpec:
    """A spec on local files."""
    return JobSpec.model_validate({"base_model": str(model), "dataset": {"id": str(data)}, "hyperparameters": hp})


def test_a_large_dataset_is_tokenized_on_a_sample_but_planned_on_every_row(
    tiny_model: Path, train_file: Path, local_root: Path
) -> None:
    result = validate(spec_for(tiny_model, train_file, max_length=320, batch_size=4), [local_root], sample_rows=10)

    assert result.stats["sampled_rows"] == 10 and result.stats["rows"] == 10
    assert result.planned_steps == 12  # 48 rows / 4


def test_every_row_over_max_length_fails_with_rows_too_long(tiny_model: Path, local_root: Path, tmp_path: Path) -> None:
    from worker.sources import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model), [local_root])
    prompt = "word " * 40 + "Price is $"
    cut_inside_completion = len(tokenizer(prompt)["input_ids"]) + 1
    data = local_root / "data" / "long-rows.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"text": prompt + "123.00"}) + "\n" for _ in range(5)))

    with pytest.raises(JobFailure) as failure:
        validate(spec_for(tiny_model, data, max_length=cut_inside_completion), [local_root], sample_rows=100)

    assert (failure.value.code, failure.value.param) == ("rows_too_long", "hyperparameters.max_length")


def test_completions_cut_away_everywhere_fail_with_completion_truncated(
    tiny_model: Path, train_file: Path, local_root: Path
) -> None:
    with pytest.raises(JobFailure) as failure:
        validate(spec_for(tiny_model, train_file, max_length=32), [local_root], sample_rows=100)

    assert (failure.value.code, failure.value.param) == ("completion_truncated", "hyperparameters.max_length")


def test_a_missing_local_model_fails_with_model_not_found(train_file: Path, local_root: Path) -> None:
    with pytest.raises(FtqError) as failure:
        validate(spec_for(local_root / "models" / "gone", train_file), [local_root], sample_rows=10)

    assert (failure.value.code, failure.value.param) == ("model_not_found", "base_model")


def test_a_missing_hub_dataset_fails_with_dataset_not_found(tiny_model: Path, local_root: Path) -> None:
    spec = JobSpec.model_validate({"base_model": str(tiny_model), "dataset": {"id": "ftq-tests/no-such-dataset"}})

    with pytest.raises(JobFailure) as failure:
        validate(spec, [local_root], sample_rows=10)

    assert (failure.value.code, failure.value.param) == ("dataset_not_found", "dataset.id")


def test_an_empty_dataset_fails_with_dataset_empty(tiny_model: Path, local_root: Path) -> None:
    data = local_root / "data" / "empty.csv"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("text,price\n")

    with pytest.raises(JobFailure) as failure:
        validate(spec_for(tiny_model, data), [local_root], sample_rows=10)

    assert (failure.value.code, failure.value.param) == ("dataset_empty", "dataset.id")
