"""One training attempt: tokenizer, data, 4-bit model, LoRA, TRL SFTTrainer, checkpoints, saved adapter."""

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, set_seed
from trl import SFTTrainer

from shared.spec import JobSpec
from worker.credentials import Credentials
from worker.data import DatasetStats, load_pairs, load_scored_rows, tokenize_pairs
from worker.distributed import RankSync
from worker.evaluation import evaluate
from worker.fp8 import fp8_supported
from worker.hub import HubPublisher
from worker.lean_optimizer import lean_optimizer_step
from worker.model_card import render_model_card
from worker.performance import (
    compile_decoder_layers,
    compiler_available,
    copy_base_weights,
    free_memory,
    liger_available,
    model_shape,
    plan_performance,
)
from worker.progress import CheckpointCallback, ProgressCallback, Reporter, TokenCounter, last_complete_checkpoint
from worker.ranks import is_main_rank, local_rank, world_size
from worker.recipe import (
    DTYPES,
    build_lora_config,
    build_sft_config,
    describe_quantization,
    load_quantized_model,
)
from worker.sources import load_tokenizer
from worker.tracking import wandb_run

log = logging.getLogger(__name__)
NO_CREDENTIALS = Credentials()


@dataclass
class Outcome:
    """What an attempt hands back: stopped early (cancel, fence or drain), or the result to store on the job."""

    stopped: bool
    drained: bool = False
    result: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)


class CompletionTokenTrainer(SFTTrainer):
    """SFTTrainer that counts the tokens carrying loss (the completions) in `state.num_input_tokens_seen`.

    The count lives in the trainer state, so it is saved with every checkpoint and restored on resume;
    `include_num_input_tokens_seen="no"` keeps transformers from counting all input tokens there instead.
    """

    def __init__(self, *args: Any, tokens: TokenCounter, lean_optimizer: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens = tokens
        self.lean_optimizer = lean_optimizer

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        """The spec's optimizer; with the plan's `lean_optimizer`, its bitsandbytes step skips the per-parameter
        synchronizations (before the scheduler wraps the step)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.lean_optimizer and not lean_optimizer_step(optimizer):
            log.warning("lean optimizer step not applied to %s", type(optimizer).__name__)
        return optimizer

    @functools.cached_property
    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @functools.cached_property
    def _counted_parameters(self) -> int:
        return int(self.model.num_parameters(exclude_embeddings=True))

    def _clip_grad_norm(self, model: Any) -> Any:
        """Clip over the adapter's parameters, the only ones with gradients: the same norm as over the whole model,
        without walking 8 billion frozen parameters' modules every step."""
        return self.accelerator.clip_grad_norm_(self._trainable_parameters, self.args.max_grad_norm)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """transformers' estimate (6 x tokens x parameters), with the parameters counted once, not per micro-batch."""
        return 6 * int(inputs["input_ids"].numel()) * self._counted_parameters

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        """Count this micro-batch's tokens (on the device: see TokenCounter), then train on it."""
        self.tokens.add(inputs["labels"], inputs.get("attention_mask"))
        return super().training_step(model, inputs, num_items_in_batch)


def pick_device() -> str:
    """This rank's GPU among the job's visible ones (the first with one rank), or the CPU (bitsandbytes 0.50 runs
    4-bit on the CPU too)."""
    return f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"


def build_trainer(
    spec: JobSpec,
    job_dir: Path,
    roots: list[Path],
    reporter: Reporter,
    *,
    job_id: str,
    interval_s: float,
    publisher: HubPublisher | None = None,
    credentials: Credentials = NO_CREDENTIALS,
) -> tuple[CompletionTokenTrainer, DatasetStats]:
    """Prepare data and model and return a ready SFTTrainer with its reporting callbacks."""
    hf_token = credentials.hf_token
    tokenizer = load_tokenizer(spec.base_model, roots, hf_token)
    pairs = load_pairs(spec.training_rows, roots, hf_token)
    train_set, stats = tokenize_pairs(pairs, tokenizer, spec.hyperparameters.max_length)
    reporter.stats(stats)
    # Seed before the LoRA layers are created: their random init is part of what `seed` makes reproducible.
    set_seed(spec.hyperparameters.seed)
    device = pick_device()
    sync = RankSync()
    sync.join(device)
    model = load_quantized_model(spec, roots, device, hf_token)
    plan = plan_performance(
        spec,
        model_shape(model),
        device=device,
        free_bytes=sync.least(free_memory(device)),  # every rank plans from the tightest GPU, so all plan alike
        liger_available=liger_available(),
        fp8_available=fp8_supported(device),
        compiler_available=compiler_available(),
        ranks=world_size(),
    )
    copies = copy_base_weights(model, plan, DTYPES[spec.quantization.compute_dtype])
    reporter.log(plan.describe(), {**plan.as_dict(), "weight_copies_bytes": copies})
    run_name = spec.wandb.run_name if spec.wandb and spec.wandb.run_name else job_id
    args = build_sft_config(
        spec.hyperparameters,
        spec.quantization,
        job_dir / "checkpoints",
        plan,
        use_cpu=device == "cpu",
        run_name=run_name,
        report_to="wandb" if spec.wandb and is_main_rank() else "none",
    )
    tokens = TokenCounter()
    progress = ProgressCallback(reporter, interval_s, tokens, sync)
    scorer = checkpoint_scorer(spec, job_dir, roots, reporter, tokenizer, hf_token) if is_main_rank() else None
    trainer = CompletionTokenTrainer(
        tokens=tokens,
        lean_optimizer=plan.lean_optimizer,
        model=model,
        args=args,
        train_dataset=train_set,
        processing_class=tokenizer,
        peft_config=build_lora_config(spec.lora),
        callbacks=[progress, CheckpointCallback(reporter, progress, publisher, scorer)],
    )
    if plan.compile:
        compile_decoder_layers(trainer.model)  # after PEFT put the adapters in, so they are compiled too
    return trainer, stats


def checkpoint_scorer(
    spec: JobSpec,
    job_dir: Path,
    roots: list[Path],
    reporter: Reporter,
    tokenizer: PreTrainedTokenizerBase,
    hf_token: str | None,
) -> Callable[[Any, int], dict[str, Any]] | None:
    """With `evaluation.at_checkpoints`: what scores the adapter at a checkpoint (the fine-tune only), its predictions
    kept in `evaluation/checkpoint-N/`; the rows are loaded once, now, so a bad dataset fails before training."""
    if spec.evaluation is None or not spec.evaluation.at_checkpoints:
        return None
    settings = spec.evaluation.model_copy(update={"baseline": False})
    scored = load_scored_rows(settings, roots, hf_token)

    def score(model: Any, step: int) -> dict[str, Any]:
        out_dir = job_dir / "evaluation" / f"checkpoint-{step}"
        return evaluate(model, tokenizer, settings, scored, out_dir, reporter, subject=f"checkpoint {step}")

    return score


def train(
    spec: JobSpec,
    job_dir: Path,
    roots: list[Path],
    reporter: Reporter,
    *,
    job_id: str,
    interval_s: float,
    credentials: Credentials = NO_CREDENTIALS,
) -> Outcome:
    """Run one attempt, resuming from the last complete checkpoint if an earlier attempt left one.

    On several ranks each runs this; rank 0 alone pushes, logs to W&B, saves the adapter and scores it.
    """
    main = is_main_rank()
    publisher = HubPublisher(spec.hub, reporter, credentials.hf_token) if spec.hub and main else None
    if publisher is not None:
        publisher.create_repo()  # before any GPU time: a bad token or repo fails the job now
    trainer, stats = build_trainer(
        spec,
        job_dir,
        roots,
        reporter,
        job_id=job_id,
        interval_s=interval_s,
        publisher=publisher,
        credentials=credentials,
    )
    resume_from = last_complete_checkpoint(job_dir / "checkpoints")
    if resume_from is not None:
        reporter.log(f"resuming from {resume_from.name}", {"checkpoint": resume_from.name})
    tracked = spec if main else spec.model_copy(update={"wandb": None})
    with wandb_run(tracked, job_id, job_dir, reporter, credentials.wandb_api_key):
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    progress = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressCallback))
    if progress.stopped or not main:
        if publisher is not None:
            publisher.wait()
        return Outcome(stopped=True, drained=progress.drained, progress=progress.progress)
    adapter_dir = job_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    trainer.processing_class.save_pretrained(str(adapter_dir))
    (adapter_dir / "README.md").write_text(render_model_card(job_id, spec, stats.as_dict(), progress.progress))
    trainable, total = trainer.model.get_nb_trainable_parameters()
    result = {
        "adapter_path": str(adapter_dir),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "quantization": describe_quantization(trainer.model, spec.quantization),
    }
    if spec.evaluation is not None:
        scored = load_scored_rows(spec.evaluation, roots, credentials.hf_token)
        result["evaluation"] = evaluate(
            trainer.model, trainer.processing_class, spec.evaluation, scored, job_dir / "evaluation", reporter
        )
    if publisher is not None:
        result["hub_commit_url"] = publisher.push_final(adapter_dir)
    return Outcome(stopped=False, result=result, progress=progress.progress)
