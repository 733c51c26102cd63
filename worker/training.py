"""One training attempt: tokenizer, data, 4-bit model, LoRA, TRL SFTTrainer, saved adapter."""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from trl import SFTTrainer

from shared.spec import JobSpec
from worker.data import DatasetStats, load_rows, split_at_template, tokenize_pairs
from worker.progress import ProgressCallback
from worker.recipe import (
    build_lora_config,
    build_sft_config,
    describe_quantization,
    load_quantized_model,
    load_tokenizer,
)

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where a training attempt sends what it learns; each call returns False once the attempt is fenced."""

    def stats(self, stats: DatasetStats) -> bool: ...

    def progress(self, progress: dict[str, Any]) -> bool: ...


@dataclass
class Outcome:
    """What a finished attempt hands back to be stored on the job."""

    result: dict[str, Any]
    progress: dict[str, Any] = field(default_factory=dict)


def pick_device() -> str:
    """The first visible GPU, or the CPU (bitsandbytes 0.50 runs 4-bit on the CPU too)."""
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def build_trainer(
    spec: JobSpec, job_dir: Path, roots: list[Path], reporter: Reporter, *, run_name: str, interval_s: float
) -> tuple[SFTTrainer, DatasetStats]:
    """Prepare data and model and return a ready SFTTrainer with its progress callback."""
    tokenizer = load_tokenizer(spec.base_model, roots)
    pairs = split_at_template(load_rows(spec.dataset, roots), spec.dataset)
    train_set, stats = tokenize_pairs(pairs, tokenizer, spec.hyperparameters.max_length)
    reporter.stats(stats)
    device = pick_device()
    model = load_quantized_model(spec, roots, device)
    args = build_sft_config(
        spec.hyperparameters,
        spec.quantization,
        job_dir / "checkpoints",
        use_cpu=device == "cpu",
        run_name=run_name,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        processing_class=tokenizer,
        peft_config=build_lora_config(spec.lora),
        callbacks=[ProgressCallback(reporter.progress, interval_s)],
    )
    return trainer, stats


def train(
    spec: JobSpec, job_dir: Path, roots: list[Path], reporter: Reporter, *, run_name: str, interval_s: float
) -> Outcome:
    """Run one attempt to the end and save the adapter and tokenizer under `job_dir/adapter`."""
    trainer, _stats = build_trainer(spec, job_dir, roots, reporter, run_name=run_name, interval_s=interval_s)
    trainer.train()
    adapter_dir = job_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    trainer.processing_class.save_pretrained(str(adapter_dir))
    trainable, total = trainer.model.get_nb_trainable_parameters()
    callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressCallback))
    result = {
        "adapter_path": str(adapter_dir),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "quantization": describe_quantization(trainer.model, spec.quantization),
    }
    return Outcome(result=result, progress=callback.progress)
