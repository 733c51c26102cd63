"""Checks a spec's data before a GPU is spent on it: tokenizer (not the model), template, lengths, stats.

Very large datasets are tokenized on a bounded sample here; the training process makes the full pass.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import JobFailure
from shared.spec import Hyperparameters, JobSpec
from worker.data import DatasetStats, load_pairs, load_scored_rows, tokenize_pairs
from worker.sources import adapter_source, load_tokenizer


@dataclass(frozen=True)
class Validation:
    """What validation learned: statistics (of a sample when `sampled_rows` is set) and the planned steps."""

    stats: dict[str, Any]
    planned_steps: int
    warnings: list[str]
    rows: int = 0  # all the rows the job would train on (the stats may be of a sample)


def planned_steps(rows: int, hp: Hyperparameters) -> int:
    """Optimizer steps the trainer will run for `rows` rows (as transformers counts them)."""
    if hp.max_steps:
        return hp.max_steps
    batches = math.ceil(rows / hp.batch_size)
    per_epoch = max(math.ceil(batches / hp.gradient_accumulation_steps), 1)
    return math.ceil(hp.epochs * per_epoch)


def _check_lengths(stats: DatasetStats, sample: int, max_length: int) -> None:
    if stats.truncated_rows == sample and stats.dropped_rows < sample:
        raise JobFailure(
            f"every row is longer than max_length={max_length} tokens, so every completion is cut short",
            code="rows_too_long",
            param="hyperparameters.max_length",
        )


def validate(spec: JobSpec, roots: list[Path], sample_rows: int, hf_token: str | None = None) -> Validation:
    """Validate a spec's model and data; raises JobFailure with the code and field at fault."""
    tokenizer = load_tokenizer(spec.base_model, roots, hf_token)
    if spec.kind == "evaluation":
        return _validate_evaluation(spec, roots, hf_token)
    # Every row: the template check is cheap.
    pairs = load_pairs(spec.training_rows, roots, hf_token)
    total = len(pairs)
    sample = pairs.select(range(min(total, sample_rows)))
    _tokenized, stats = tokenize_pairs(sample, tokenizer, spec.hyperparameters.max_length)
    _check_lengths(stats, len(sample), spec.hyperparameters.max_length)
    kept_share = stats.rows / len(sample)
    warnings = []
    if stats.dropped_rows:
        warnings.append(f"{stats.dropped_rows} of {len(sample)} rows lose their whole completion at max_length")
    if stats.truncated_rows:
        warnings.append(f"{stats.truncated_rows} of {len(sample)} rows are cut at max_length")
    summary: dict[str, Any] = stats.as_dict()
    if len(sample) < total:
        summary["sampled_rows"] = len(sample)
    steps = planned_steps(max(round(total * kept_share), 1), spec.hyperparameters)
    return Validation(stats=summary, planned_steps=steps, warnings=warnings, rows=total)


def _validate_evaluation(spec: JobSpec, roots: list[Path], hf_token: str | None) -> Validation:
    """An evaluation job: its rows split at the template and its adapter is there; it plans one answer a row
    (two with `baseline`)."""
    assert spec.evaluation is not None  # the spec's validation requires it for this kind
    scored = load_scored_rows(spec.evaluation, roots, hf_token)
    if spec.adapter is not None:
        adapter_source(spec.adapter, roots)
    rows = len(scored.prompts)
    return Validation(stats={"rows": rows}, planned_steps=spec.evaluation.answers_for(rows), warnings=[], rows=rows)
