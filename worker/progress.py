"""A trainer callback that reports progress to the job row, at most once per interval."""

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

Report = Callable[[dict[str, Any]], bool]


class ProgressCallback(TrainerCallback):
    """Turns trainer state into the job's `progress`; stops training when the report is refused (fenced)."""

    def __init__(self, report: Report, interval_s: float) -> None:
        self.report = report
        self.interval_s = interval_s
        self.progress: dict[str, Any] = {"step": 0, "trained_tokens": 0}
        self._started = 0.0
        self._last_report = 0.0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Start the clock and publish the planned step count."""
        self._started = time.monotonic()
        self.progress.update(step=state.global_step, total_steps=state.max_steps, epoch=state.epoch or 0.0)
        self._send(control, force=True)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep the latest loss and learning rate."""
        logs = logs or {}
        if "loss" in logs:
            self.progress["loss"] = float(logs["loss"])
        if "learning_rate" in logs:
            self.progress["learning_rate"] = float(logs["learning_rate"])

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Update step, tokens, speed and ETA; write them out when the interval has passed."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        step, total = state.global_step, state.max_steps
        tokens = int(state.num_input_tokens_seen)
        self.progress.update(
            step=step,
            total_steps=total,
            epoch=state.epoch,
            trained_tokens=tokens,
            tokens_per_second=round(tokens / elapsed, 2),
            eta_seconds=round(elapsed / step * (total - step), 1) if step else None,
        )
        self._send(control, force=step >= total)

    def _send(self, control: TrainerControl, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < self.interval_s:
            return
        self._last_report = now
        if not self.report(dict(self.progress)):
            # The job is no longer ours (cancelled or taken over): stop at this step.
            control.should_training_stop = True
