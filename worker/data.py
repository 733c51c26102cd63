"""Training rows: load them, split each at the response template, tokenize with a completion mask.

We tokenize ourselves (rather than letting TRL do it) so the dataset statistics are exact before training
starts and so prompt and completion are tokenized exactly as the model will see them at inference: the
prompt ending in the template, then the completion generated token by token after it.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset
from transformers import PreTrainedTokenizerBase

from shared.errors import FtqError, JobFailure
from shared.paths import check_local_dataset, refuse_hub_id_shadowed_by_path
from shared.spec import DatasetSpec, is_file_id, is_local_path

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MAX_ROWS_NAMED = 10


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


def load_rows(spec: DatasetSpec, roots: list[Path], token: str | None = None) -> Dataset:
    """Load the dataset split named by the spec (a local file or folder under the roots, or a Hub id)."""
    try:
        if is_file_id(spec.id):
            # Imported here: the database stack loads only for uploaded files (the GPU bench reads paths).
            from shared.db import session_scope
            from shared.files import uploaded_file_path

            with session_scope() as session:
                path = uploaded_file_path(session=session, file_id=spec.id)
            if not path.exists():
                raise JobFailure(f"uploaded file {spec.id} is gone", code="dataset_not_found", param="dataset.id")
            rows = load_dataset(FORMATS[path.suffix], data_files={spec.split: str(path)}, split=spec.split)
        elif is_local_path(spec.id):
            path = check_local_dataset(spec.id, roots)
            if path.is_dir():
                rows = load_dataset(str(path), split=spec.split)
            else:
                rows = load_dataset(FORMATS[path.suffix], data_files={spec.split: str(path)}, split=spec.split)
        else:
            refuse_hub_id_shadowed_by_path(spec.id, "dataset.id")
            rows = load_dataset(spec.id, split=spec.split, token=token)
    except FtqError:
        raise
    except ValueError as exc:
        if "corresponds to no data" in str(exc):  # how `datasets` reports a split without rows
            raise JobFailure(
                f"dataset {spec.id!r} split {spec.split!r} has no rows", code="dataset_empty", param="dataset.id"
            ) from exc
        raise JobFailure(
            f"cannot read split {spec.split!r}: {exc}", code="dataset_invalid", param="dataset.split"
        ) from exc
    except Exception as exc:
        raise JobFailure(
            f"dataset {spec.id!r} not found or unreadable: {type(exc).__name__}: {exc}",
            code="dataset_not_found",
            param="dataset.id",
        ) from exc
    if spec.text_field not in rows.column_names:
        raise JobFailure(
            f"column {spec.text_field!r} not in dataset (columns: {', '.join(rows.column_names)})",
            code="text_field_missing",
            param="dataset.text_field",
        )
    if len(rows) == 0:
        raise JobFailure(
            f"dataset {spec.id!r} split {spec.split!r} has no rows", code="dataset_empty", param="dataset.id"
        )
    if spec.max_rows is not None and len(rows) > spec.max_rows:
        rows = rows.select(range(spec.max_rows))
    return rows.select_columns([spec.text_field])


def split_at_template(rows: Dataset, spec: DatasetSpec) -> Dataset:
    """Split each text at the last response template into `prompt` (ending in it) and `completion`."""
    texts: list[str] = rows[spec.text_field]
    missing = [i for i, text in enumerate(texts) if not isinstance(text, str) or spec.response_template not in text]
    if missing:
        named = ", ".join(str(i) for i in missing[:MAX_ROWS_NAMED])
        more = f" and {len(missing) - MAX_ROWS_NAMED} more" if len(missing) > MAX_ROWS_NAMED else ""
        raise JobFailure(
            f"{len(missing)} of {len(texts)} rows lack the response template {spec.response_template!r}: "
            f"rows {named}{more} (0-based)",
            code="template_missing",
            param="dataset.response_template",
        )
    prompts, completions = [], []
    for text in texts:
        head, template, tail = text.rpartition(spec.response_template)
        prompts.append(head + template)
        completions.append(tail)
    return Dataset.from_dict({"prompt": prompts, "completion": completions})


def tokenize_pairs(pairs: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> tuple[Dataset, DatasetStats]:
    """Tokenize prompt/completion pairs into `input_ids` + `completion_mask`, truncated at `max_length`.

    The completion ends with EOS so the model learns to stop. Rows whose completion is cut away entirely
    carry no loss and are dropped.
    """
    if tokenizer.eos_token_id is None:
        raise JobFailure("the tokenizer has no EOS token", code="tokenizer_invalid", param="base_model")

    def encode(batch: dict[str, list[str]]) -> dict[str, list[Any]]:
        prompt_ids = tokenizer(batch["prompt"], add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(batch["completion"], add_special_tokens=False)["input_ids"]
        out: dict[str, list[Any]] = {"input_ids": [], "completion_mask": [], "truncated": []}
        for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
            ids = prompt + completion + [tokenizer.eos_token_id]
            mask = [0] * len(prompt) + [1] * (len(completion) + 1)
            out["input_ids"].append(ids[:max_length])
            out["completion_mask"].append(mask[:max_length])
            out["truncated"].append(len(ids) > max_length)
        return out

    encoded = pairs.map(encode, batched=True, remove_columns=pairs.column_names, desc="Tokenizing")
    kept = encoded.filter(lambda row: 1 in row["completion_mask"], desc="Dropping rows with no completion left")
    stats = DatasetStats(
        rows=len(kept),
        tokens=sum(len(ids) for ids in kept["input_ids"]),
        completion_tokens=sum(sum(mask) for mask in kept["completion_mask"]),
        truncated_rows=sum(encoded["truncated"]),
        dropped_rows=len(encoded) - len(kept),
    )
    if stats.rows == 0:
        raise JobFailure(
            f"every row's completion lies beyond max_length={max_length}: nothing to train on",
            code="completion_truncated",
            param="hyperparameters.max_length",
        )
    return kept.remove_columns(["truncated"]), stats
