"""A job of kind `evaluation`: score an existing adapter (or the base model alone) on held-out rows, without
training, in the same fresh process a fine-tune gets.
"""

import math
import time
from pathlib import Path
from typing import Any

from shared.spec import JobSpec
from worker.credentials import Credentials
from worker.data import load_scored_rows
from worker.evaluation import evaluate
from worker.progress import Reporter
from worker.recipe import describe_quantization, load_adapter, load_quantized_model
from worker.sources import load_tokenizer
from worker.training import NO_CREDENTIALS, Outcome, pick_device


class EvaluationStopped(Exception):
    """The job was cancelled, drained or taken from this attempt while it was generating."""

    def __init__(self, drained: bool) -> None:
        super().__init__("drained" if drained else "stopped")
        self.drained = drained


class EvaluationProgress:
    """Reports answers generated as the job's progress (step = answers, as planned at validation); raises
    `EvaluationStopped` when the report is refused."""

    def __init__(self, reporter: Reporter, total: int, interval_s: float) -> None:
        self.reporter = reporter
        self.interval_s = interval_s
        self.progress: dict[str, Any] = {"step": 0, "total_steps": total, "trained_tokens": 0}
        self._started = time.monotonic()
        self._last_report = -math.inf  # the first batch is always reported

    def __call__(self, done: int) -> None:
        """After each generated batch: publish the count and the ETA at most once per interval (and at the end)."""
        now = time.monotonic()
        total = self.progress["total_steps"]
        elapsed = now - self._started
        self.progress.update(step=done, eta_seconds=round(elapsed / done * (total - done), 1) if done else None)
        if done < total and now - self._last_report < self.interval_s:
            return
        self._last_report = now
        directive = self.reporter.progress(dict(self.progress))
        if directive != "continue":
            raise EvaluationStopped(drained=directive == "drain")


def run_evaluation(
    spec: JobSpec,
    job_dir: Path,
    roots: list[Path],
    reporter: Reporter,
    *,
    interval_s: float,
    credentials: Credentials = NO_CREDENTIALS,
) -> Outcome:
    """Load the 4-bit base (and the adapter), generate an answer for each row, score them, keep the predictions."""
    assert spec.evaluation is not None  # the spec's validation requires it for this kind
    hf_token = credentials.hf_token
    tokenizer = load_tokenizer(spec.base_model, roots, hf_token)
    model: Any = load_quantized_model(spec, roots, pick_device(), hf_token)
    if spec.adapter is not None:
        model = load_adapter(model, spec.adapter, roots, hf_token)
    scored = load_scored_rows(spec.evaluation, roots, hf_token)
    progress = EvaluationProgress(reporter, spec.evaluation.answers_for(len(scored.prompts)), interval_s)
    try:
        scores = evaluate(
            model,
            tokenizer,
            spec.evaluation,
            scored,
            job_dir / "evaluation",
            reporter,
            on_answered=progress,
            subject="fine-tune" if spec.adapter is not None else "base model",
        )
    except EvaluationStopped as stopped:
        return Outcome(stopped=True, drained=stopped.drained, progress=progress.progress)
    result = {
        "quantization": describe_quantization(model, spec.quantization),
        "evaluation": scores,
    }
    return Outcome(stopped=False, result=result, progress=progress.progress)
