"""The data path of the worker: template split, tokenization with completion masks, and TRL's collated labels."""

import os
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset

from shared.errors import JobFailure
from shared.spec import DatasetSpec, JobSpec
from worker.data import load_rows, split_at_template, tokenize_pairs
from worker.sources import load_tokenizer

TEMPLATE = "Price is $"


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path, local_root: Path) -> Any:
    """The tiny model's tokenizer, loaded as the worker loads it."""
    return load_tokenizer(str(tiny_model), [local_root])


def rows(texts: list[str]) -> Dataset:
    """A one-column dataset of texts."""
    return Dataset.from_dict({"text": texts})


def test_split_uses_the_last_template_occurrence() -> None:
    pairs = split_at_template(rows(["Price is $ old. Price is $42.00"]), DatasetSpec(id="org/data"))

    assert pairs[0] == {"prompt": "Price is $ old. Price is $", "completion": "42.00"}


def test_rows_without_the_template_fail_naming_them() -> None:
    texts = ["a Price is $1.00", "no template here", "b Price is $2.00", "nor here"]

    with pytest.raises(JobFailure) as failure:
        split_at_template(rows(texts), DatasetSpec(id="org/data"))

    assert failure.value.code == "template_missing"
    assert failure.value.param == "dataset.response_template"
    assert "rows 1, 3" in failure.value.message and "2 of 4" in failure.value.message


def test_completion_tokens_are_exactly_the_tokens_after_the_template(tokenizer: Any, pricer_rows: list[Any]) -> None:
    texts = [row["text"] for row in pricer_rows[:20]]

    encoded, stats = tokenize_pairs(split_at_template(rows(texts), DatasetSpec(id="o/d")), tokenizer, 1024)

    for text, row in zip(texts, encoded, strict=True):
        prompt, _, price = text.rpartition(TEMPLATE)
        completion = [i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m]
        assert tokenizer.decode(completion) == price + tokenizer.eos_token
        assert row["completion_mask"].index(1) == len(tokenizer(prompt + TEMPLATE)["input_ids"])
    expected = sum(len(tokenizer(t.rpartition(TEMPLATE)[2], add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    assert stats.completion_tokens == expected
    assert (stats.rows, stats.truncated_rows, stats.dropped_rows) == (20, 0, 0)
    assert stats.tokens == sum(len(r["input_ids"]) for r in encoded)


def test_truncation_counts_cut_rows_and_drops_rows_without_completion(tokenizer: Any) -> None:
    short, long = "x Price is $5.00", "word " * 60 + "Price is $7.00"
    prompt_len = len(tokenizer("word " * 60 + TEMPLATE)["input_ids"])

    encoded, stats = tokenize_pairs(
        split_at_template(rows([short, long, long]), DatasetSpec(id="o/d")), tokenizer, prompt_len
    )

    assert (stats.rows, stats.truncated_rows, stats.dropped_rows) == (1, 2, 2)
    assert len(encoded) == 1


def test_every_completion_cut_away_fails_with_completion_truncated(tokenizer: Any) -> None:
    pairs = split_at_template(rows(["word " * 60 + "Price is $7.00"]), DatasetSpec(id="o/d"))

    with pytest.raises(JobFailure) as failure:
        tokenize_pairs(pairs, tokenizer, 8)

    assert (failure.value.code, failure.value.param) == ("completion_truncated", "hyperparameters.max_length")


def test_missing_text_column_fails_naming_the_field(train_file: Path, local_root: Path) -> None:
    with pytest.raises(JobFailure) as failure:
        load_rows(DatasetSpec(id=str(train_file), text_field="body"), [local_root])

    assert (failure.value.code, failure.value.param) == ("text_field_missing", "dataset.text_field")


def test_max_rows_takes_the_first_rows(train_file: Path, local_root: Path) -> None:
    loaded = load_rows(DatasetSpec(id=str(train_file), max_rows=5), [local_root])

    assert len(loaded) == 5


@pytest.mark.training
def test_collated_batch_masks_every_prompt_token_and_trains_every_completion_token(
    tiny_model: Path, train_file: Path, local_root: Path, tmp_path: Path, pricer_rows: list[Any]
) -> None:
    from worker.training import build_trainer

    class Quiet:
        def stats(self, stats: Any) -> bool:
            return True

        def progress(self, progress: Any) -> bool:
            return True

        def log(self, message: str, data: Any) -> None:
            pass

    spec = JobSpec.model_validate(
        {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}, "hyperparameters": {"max_length": 320}}
    )
    trainer, _stats = build_trainer(spec, tmp_path, [local_root], Quiet(), job_id="t", interval_s=1.0)
    tokenizer = trainer.processing_class

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])

    for i in range(4):
        prompt, _, price = pricer_rows[i]["text"].rpartition(TEMPLATE)
        labels, ids = batch["labels"][i].tolist(), batch["input_ids"][i].tolist()
        real = int(batch["attention_mask"][i].sum()) if "attention_mask" in batch else len(ids)
        n_prompt = len(tokenizer(prompt + TEMPLATE)["input_ids"])
        assert all(label == -100 for label in labels[:n_prompt]), "a prompt token carries loss"
        assert labels[n_prompt:real] == ids[n_prompt:real], "a completion token is not trained"
        assert all(label == -100 for label in labels[real:]), "a padding token carries loss"
        assert tokenizer.decode(labels[n_prompt:real]) == price + tokenizer.eos_token


def test_worker_processes_split_and_tokenize_exactly_as_one_process_does(
    monkeypatch: pytest.MonkeyPatch, tokenizer: Any, pricer_rows: list[dict[str, Any]]
) -> None:
    import worker.data

    texts = [str(row["text"]) for row in pricer_rows[:300]]
    spec = DatasetSpec(id="x/y")
    alone, alone_stats = tokenize_pairs(split_at_template(rows(texts), spec), tokenizer, 230)
    monkeypatch.setattr(worker.data, "PARALLEL_FROM_ROWS", 10)  # 300 rows now go to worker processes
    parallel, parallel_stats = tokenize_pairs(split_at_template(rows(texts), spec), tokenizer, 230)

    assert worker.data.worker_processes(300) == min(os.cpu_count() or 1, 16)
    assert parallel_stats == alone_stats and alone_stats.rows > 0
    assert parallel["input_ids"] == alone["input_ids"] and parallel["completion_mask"] == alone["completion_mask"]


def test_rows_without_the_template_are_named_by_worker_processes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.data

    monkeypatch.setattr(worker.data, "PARALLEL_FROM_ROWS", 10)
    texts = [f"item {n} Price is $1.00" for n in range(40)]
    texts[3] = texts[37] = "no template here"

    with pytest.raises(JobFailure, match=r"2 of 40 rows .* rows 3, 37 \(0-based\)"):
        split_at_template(rows(texts), DatasetSpec(id="x/y"))
