"""Trainer callbacks that report to the job: progress (at most once per interval), logged metrics as events,
complete checkpoints, and a stop at the next step once the job is cancelled or taken from this attempt."""

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from shared.attempts import CONTINUE, DRAIN
from worker.distributed import RankSync

COMPLETE_MARKER = ".complete"
METRIC_KEYS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "entropy")
EVALUATION_FIGURES = ("mae", "rmsle", "hit_rate", "near_rate", "unparsable", "accuracy")


class Reporter(Protocol):
    """Where a training attempt sends what it learns; `progress` answers "continue", "drain" or "stop"."""

    def stats(self, stats: Any) -> bool: ...

    def progress(self, progress: dict[str, Any]) -> str: ...

    def metrics(self, step: int, metrics: dict[str, float | None]) -> None: ...

    def log(self, message: str, data: dict[str, Any]) -> None: ...

    def wandb(self, run_id: str, url: str | None, directory: str, mode: str) -> None: ...

    def hub_commit(self, step: int | None, url: str) -> None: ...

    def hub_failed(self, step: int | None, message: str) -> None: ...

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float | None]) -> None: ...


class TokenCounter:
    """Tokens trained on in this attempt: those carrying loss (the completions) and all of them (no padding).

    Micro-batches are counted on their device, so counting never makes the host wait for the GPU; `read` brings
    the counts to the host (one synchronization) only when they are reported or saved.
    """

    def __init__(self) -> None:
        self.input_tokens = 0  # counted up to the last `read`
        self._pending: torch.Tensor | None = None  # [completion tokens, input tokens] since then, on the device

    def add(self, labels: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Count one micro-batch, without a synchronization."""
        # Every count is a device op: a tensor made from a host number would be a copy that waits for the GPU.
        mask = attention_mask if attention_mask is not None else torch.ones_like(labels)
        counts = torch.stack([(labels != -100).sum(), mask.sum()])
        self._pending = counts if self._pending is None else self._pending + counts

    def read(self, sync: RankSync | None = None) -> int:
        """Bring the pending counts to the host, summed over the job's ranks with `sync` (every rank must read at
        the same step); returns the completion tokens added since the last read."""
        if self._pending is None:
            return 0
        pending = sync.total(self._pending) if sync is not None else self._pending
        completion, inputs = (int(n) for n in pending.tolist())
        self._pending = None
        self.input_tokens += inputs
        return completion


class ProgressCallback(TrainerCallback):
    """Turns trainer state into the job's `progress` and `progress` events; stops when the report is refused.

    On several ranks, rank 0's clock decides when a report is due and its report's answer is every rank's (`sync`);
    the token counts are summed over the ranks.
    """

    def __init__(
        self, reporter: Reporter, interval_s: float, tokens: TokenCounter, sync: RankSync | None = None
    ) -> None:
        self.reporter = reporter
        self.tokens = tokens
        self.sync = sync or RankSync()
        self.interval_s = interval_s
        self.progress: dict[str, Any] = {"step": 0, "trained_tokens": 0}
        self.metrics: dict[str, float | None] = {}
        self.stopped = False
        self.drained = False
        self._started = 0.0
        self._start_step = 0
        self._last_report = 0.0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Start the clock (after a resume, from where it resumed) and publish the planned step count."""
        self._started = time.monotonic()
        self._start_step = state.global_step
        self.progress.update(step=state.global_step, total_steps=state.max_steps, epoch=state.epoch or 0.0)
        self._send(control)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep the latest metrics and publish them as a `progress` event."""
        # NaN or inf (a diverging run) is stored as null: JSON has no such numbers.
        found = {k: float(v) if math.isfinite(v) else None for k, v in (logs or {}).items() if k in METRIC_KEYS}
        if "loss" not in found:
            return  # not a training log (e.g. the end-of-training summary)
        self.metrics = found
        self.progress.update(loss=found["loss"], learning_rate=found.get("learning_rate"))
        self.reporter.metrics(state.global_step, {**found, "epoch": float(state.epoch or 0.0)})

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Update step, tokens, speed and ETA; write them out when the interval has passed."""
        if self.stopped:  # told to stop before the first step (on_train_begin): the step start reset the flags
            control.should_training_stop, control.should_save = True, self.drained
            return
        step, total = state.global_step, state.max_steps
        due = bool(self.sync.share(step >= total or time.monotonic() - self._last_report >= self.interval_s))
        if due or control.should_save:  # a checkpoint saves the state: its token count must be current
            state.num_input_tokens_seen += self.tokens.read(self.sync)  # completion tokens: see CompletionTokenTrainer
        if not due:
            return  # between reports nothing is read from the GPU, so the host runs ahead
        elapsed = max(time.monotonic() - self._started, 1e-9)
        done_here = step - self._start_step
        self.progress.update(
            step=step,
            total_steps=total,
            epoch=state.epoch,
            trained_tokens=int(state.num_input_tokens_seen),
            tokens_per_second=round(self.tokens.input_tokens / elapsed, 2),
            eta_seconds=round(elapsed / done_here * (total - step), 1) if done_here else None,
        )
        self._send(control)

    def _send(self, control: TrainerControl) -> None:
        self._last_report = time.monotonic()
        directive = self.sync.share_directive(self.reporter.progress(dict(self.progress)))
        if directive == CONTINUE:
            return
        # Drain: save a checkpoint at this step to resume from, then stop. Cancelled or no longer this
        # attempt's job: stop and write nothing more (another attempt may own the job directory now).
        self.stopped = True
        self.drained = directive == DRAIN
        control.should_save = self.drained
        control.should_training_stop = True


class CheckpointCallback(TrainerCallback):
    """Saves at the last step too, marks each checkpoint complete once written, records it, and pushes it."""

    def __init__(
        self,
        reporter: Reporter,
        progress: ProgressCallback,
        publisher: Any = None,
        scorer: Callable[[Any, int], dict[str, Any]] | None = None,
    ) -> None:
        self.reporter = reporter
        self.progress = progress
        self.publisher = publisher
        self.scorer = scorer  # (model, step) -> evaluation figures, for `evaluation.at_checkpoints`

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Ask for a save at the final step, so the end of training is a checkpoint as well."""
        if state.global_step >= state.max_steps and not self.progress.stopped:
            control.should_save = True

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Runs after the checkpoint directory is fully written: only now is it marked complete (by rank 0, which
        writes the adapter and optimizer state; the others write nothing the job lists)."""
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not state.is_world_process_zero or not path.is_dir():
            return
        (path / COMPLETE_MARKER).touch()
        metrics = dict(self.progress.metrics)
        # The final step is scored by the evaluation after training; a drain's save is not worth the wait.
        if self.scorer is not None and state.global_step < state.max_steps and not self.progress.stopped:
            figures = self.scorer(kwargs["model"], state.global_step)
            metrics.update({f"eval_{k}": v for k, v in figures.items() if k in EVALUATION_FIGURES})
        self.reporter.checkpoint(state.global_step, path, metrics)
        if self.publisher is not None:
            self.publisher.push_checkpoint(state.global_step, path)


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint directory marked complete, or None (a half-written one is skipped)."""
    complete = [p for p in output_dir.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists()]
    return max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)
