"""Rows: load them (to train on, or held out to score), split each at the response template, tokenize the
training rows with a completion mask.

We tokenize ourselves (rather than letting TRL do it) so the dataset statistics are exact before training
starts and so prompt and completion are tokenized exactly as the model will see them at inference: the
prompt ending in the template, then the completion generated token by token after it.
"""

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset, load_dataset
from transformers import PreTrainedTokenizerBase

from shared.errors import FtqError, JobFailure
from shared.paths import check_local_dataset, refuse_hub_id_shadowed_by_path
from shared.spec import DatasetSpec, EvaluationSpec, is_file_id, is_local_path

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MAX_ROWS_NAMED = 10
PARALLEL_FROM_ROWS = 20_000  # below this, starting worker processes costs more than it saves
SCORED_FIELD = "evaluation.dataset"  # where errors about the scored rows point


@dataclass(frozen=True)
class DatasetStats:
    """What tokenizing the dataset found; stored on the job as `stats`."""

    rows: int
    tokens: int
    completion_tokens: int
    truncated_rows: int
    dropped_rows: int

    def as_dict(self) -> dict[str, int]:
        """The `stats` object of the API."""
        return asdict(self)


def load_rows(spec: DatasetSpec, roots: list[Path], token: str | None = None, *, field: str = "dataset") -> Dataset:
    """Load the dataset split named by the spec (a local file or folder under the roots, or a Hub id); errors name
    the spec's `field`."""
    try:
        if is_file_id(spec.id):
            # Imported here: the database stack loads only for uploaded files (the GPU bench reads paths).
            from shared.db import session_scope
            from shared.files import uploaded_file_path

            with session_scope() as session:
                path = uploaded_file_path(session=session, file_id=spec.id, param=f"{field}.id")
            if not path.exists():
                raise JobFailure(f"uploaded file {spec.id} is gone", code="dataset_not_found", param=f"{field}.id")
            rows = load_dataset(FORMATS[path.suffix], data_files={spec.split: str(path)}, split=spec.split)
        elif is_local_path(spec.id):
            path = check_local_dataset(spec.id, roots, param=f"{field}.id")
            if path.is_dir():
                rows = load_dataset(str(path), split=spec.split)
            else:
                rows = load_dataset(FORMATS[path.suffix], data_files={spec.split: str(path)}, split=spec.split)
        else:
            refuse_hub_id_shadowed_by_path(spec.id, f"{field}.id")
            rows = load_dataset(spec.id, split=spec.split, token=token)
    except FtqError:
        raise
    except ValueError as exc:
        if "corresponds to no data" in str(exc):  # how `datasets` reports a split without rows
            raise JobFailure(
                f"dataset {spec.id!r} split {spec.split!r} has no rows", code="dataset_empty", param=f"{field}.id"
            ) from exc
        raise JobFailure(
            f"cannot read split {spec.split!r}: {exc}", code="dataset_invalid", param=f"{field}.split"
        ) from exc
    except Exception as exc:
        raise JobFailure(
            f"dataset {spec.id!r} not found or unreadable: {type(exc).__name__}: {exc}",
            code="dataset_not_found",
            param=f"{field}.id",
        ) from exc
    if spec.text_field not in rows.column_names:
        raise JobFailure(
            f"column {spec.text_field!r} not in dataset (columns: {', '.join(rows.column_names)})",
            code="text_field_missing",
            param=f"{field}.text_field",
        )
    if len(rows) == 0:
        raise JobFailure(
            f"dataset {spec.id!r} split {spec.split!r} has no rows", code="dataset_empty", param=f"{field}.id"
        )
    if spec.max_rows is not None and len(rows) > spec.max_rows:
        rows = rows.select(range(spec.max_rows))
    return rows.select_columns([spec.text_field])


def worker_processes(rows: int) -> int | None:
    """Processes for `datasets.map` over `rows` rows: every core for a large dataset, none (in-process) else."""
    return min(os.cpu_count() or 1, 16) if rows >= PARALLEL_FROM_ROWS else None


def split_at_template(rows: Dataset, spec: DatasetSpec, *, field: str = "dataset") -> Dataset:
    """Split each text at the last response template into `prompt` (ending in it) and `completion`.

    Runs as an Arrow `map` (in worker processes for a large dataset), so no Python list of all rows is built.
    """
    template, column = spec.response_template, spec.text_field

    def split(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"prompt": [], "completion": [], "missing": []}
        for index, text in zip(indices, batch[column], strict=True):
            head, found, tail = text.rpartition(template) if isinstance(text, str) else ("", "", "")
            out["prompt"].append(head + found)
            out["completion"].append(tail)
            out["missing"].append(index if not found else -1)
        return out

    pairs = rows.map(
        split,
        batched=True,
        with_indices=True,
        remove_columns=rows.column_names,
        num_proc=worker_processes(len(rows)),
        desc="Splitting at the template",
    )
    missing = pairs.data.column("missing").to_numpy()
    missing = missing[missing >= 0]
    if len(missing):
        named = ", ".join(str(i) for i in missing[:MAX_ROWS_NAMED])
        more = f" and {len(missing) - MAX_ROWS_NAMED} more" if len(missing) > MAX_ROWS_NAMED else ""
        raise JobFailure(
            f"{len(missing)} of {len(rows)} rows lack the response template {template!r}: rows {named}{more} (0-based)",
            code="template_missing",
            param=f"{field}.response_template",
        )
    return pairs.remove_columns(["missing"])


def load_pairs(spec: DatasetSpec, roots: list[Path], token: str | None = None, *, field: str = "dataset") -> Dataset:
    """The dataset the spec names, each row split at the template into `prompt` and `completion` (errors name the
    spec's `field`)."""
    return split_at_template(load_rows(spec, roots, token, field=field), spec, field=field)


@dataclass(frozen=True)
class ScoredRows:
    """The held-out rows split at the template: what each prompt asks and the truth after it."""

    prompts: list[str]
    truths: list[str]


def load_scored_rows(spec: EvaluationSpec, roots: list[Path], hf_token: str | None = None) -> ScoredRows:
    """Load the evaluation rows and split each into its prompt and its truth (errors name `evaluation.dataset`)."""
    pairs = load_pairs(spec.dataset, roots, hf_token, field=SCORED_FIELD)
    return ScoredRows(prompts=list(pairs["prompt"]), truths=list(pairs["completion"]))


def tokenize_pairs(pairs: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> tuple[Dataset, DatasetStats]:
    """Tokenize prompt/completion pairs into `input_ids` + `completion_mask`, truncated at `max_length`.

    The completion ends with EOS so the model learns to stop. Rows whose completion is cut away entirely
    carry no loss and are dropped.
    """
    if tokenizer.eos_token_id is None:
        raise JobFailure("the tokenizer has no EOS token", code="tokenizer_invalid", param="base_model")

    eos = tokenizer.eos_token_id

    def encode(batch: dict[str, list[str]]) -> dict[str, list[Any]]:
        prompt_ids = tokenizer(batch["prompt"], add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(batch["completion"], add_special_tokens=False)["input_ids"]
        out: dict[str, list[Any]] = {"input_ids": [], "completion_mask": [], "truncated": [], "loss_tokens": []}
        for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
            ids = prompt + completion + [eos]
            mask = [0] * len(prompt) + [1] * (len(completion) + 1)
            out["input_ids"].append(ids[:max_length])
            out["completion_mask"].append(mask[:max_length])
            out["truncated"].append(len(ids) > max_length)
            out["loss_tokens"].append(sum(mask[:max_length]))
        return out

    processes = worker_processes(len(pairs))
    encoded = pairs.map(encode, batched=True, remove_columns=pairs.column_names, num_proc=processes, desc="Tokenizing")
    # Statistics from Arrow columns (no Python list of every row's tokens); a row is kept when it carries loss.
    loss_tokens = encoded.data.column("loss_tokens")
    has_loss = pc.greater(loss_tokens, 0)
    lengths = pc.list_value_length(encoded.data.column("input_ids"))
    kept_rows = int(pc.sum(has_loss).as_py() or 0)
    stats = DatasetStats(
        rows=kept_rows,
        tokens=int(pc.sum(pc.if_else(has_loss, lengths, 0)).as_py() or 0),
        completion_tokens=int(pc.sum(loss_tokens).as_py() or 0),
        truncated_rows=int(pc.sum(encoded.data.column("truncated")).as_py() or 0),
        dropped_rows=len(encoded) - kept_rows,
    )
    kept = (
        encoded
        if kept_rows == len(encoded)
        else encoded.filter(
            lambda batch: [n > 0 for n in batch["loss_tokens"]],
            batched=True,
            num_proc=processes,
            desc="Dropping rows with no completion left",
        )
    )
    if stats.rows == 0:
        raise JobFailure(
            f"every row's completion lies beyond max_length={max_length}: nothing to train on",
            code="completion_truncated",
            param="hyperparameters.max_length",
        )
    return kept.remove_columns(["truncated", "loss_tokens"]), stats
