"""After training, in the same process: generate an answer for each held-out prompt with the adapter on the 4-bit
base (and, with `baseline`, without it), score the answers, and keep every prediction as JSONL.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from shared.spec import EvaluationSpec
from worker.charts import draw_charts
from worker.data import ScoredRows
from worker.progress import Reporter
from worker.scoring import grade, parse_number, score_numeric

PREDICTIONS_FILE = "predictions.jsonl"


@torch.no_grad()
@torch.compiler.set_stance("force_eager")
def generate_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    spec: EvaluationSpec,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The completion the model writes after each prompt, batched, with left padding as generation needs;
    `on_batch` hears how many prompts are answered after each batch. Runs eager where training compiled the
    decoder layers: generation calls them with a new shape at every token and under other guards (eval mode, no
    gradients, the adapter off), so each call would recompile, for one pass over the rows."""
    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), spec.batch_size):
            batch = tokenizer(prompts[start : start + spec.batch_size], return_tensors="pt", padding=True)
            batch = batch.to(model.device)
            sampling: dict[str, Any] = {"do_sample": spec.temperature > 0}
            if spec.temperature > 0:
                sampling["temperature"] = spec.temperature
            output = model.generate(
                **batch,
                max_new_tokens=spec.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
                **sampling,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
            if on_batch is not None:
                on_batch(len(answers))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def _score(spec: EvaluationSpec, truths: list[str], answers: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if spec.metric == "exact_match":
        hits = [answer.strip() == truth.strip() for truth, answer in zip(truths, answers, strict=True)]
        rows: list[dict[str, Any]] = [
            {"truth": t, "answer": a, "grade": "hit" if h else "miss"}
            for t, a, h in zip(truths, answers, hits, strict=True)
        ]
        return {"rows": len(hits), "accuracy": sum(hits) / len(hits) if hits else 0.0}, rows
    numbers = [(parse_number(truth), parse_number(answer)) for truth, answer in zip(truths, answers, strict=True)]
    pairs = [(truth, guess) for truth, guess in numbers if truth is not None]
    scored: list[dict[str, Any]] = [
        {
            "truth": truth,
            "answer": answer,
            "prediction": guess,
            "grade": grade(truth, guess) if truth is not None else None,
        }
        for (truth, guess), answer in zip(numbers, answers, strict=True)
    ]
    return score_numeric(pairs).as_dict(), scored


def evaluate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    spec: EvaluationSpec,
    scored: ScoredRows,
    out_dir: Path,
    reporter: Reporter,
    on_answered: Callable[[int], None] | None = None,
    subject: str = "fine-tune",
) -> dict[str, Any]:
    """Score the model (`subject`: the fine-tune, or the base model alone) and, with `baseline`, the base model under
    the adapter; write the predictions; return the figures. `on_answered` hears the answers generated so far, over
    both models, after each batch."""
    prompts, truths = scored.prompts, scored.truths
    reporter.log(f"evaluating on {len(prompts)} rows", {"rows": len(prompts), "metric": spec.metric})

    def progress(model_name: str, before: int) -> Callable[[int], None]:
        def report(done: int) -> None:
            reporter.log(f"evaluating the {model_name}: {done}/{len(prompts)} answered", {"done": done})
            if on_answered is not None:
                on_answered(before + done)

        return report

    answers = generate_answers(model, tokenizer, prompts, spec, progress(subject, 0))
    figures, rows = _score(spec, truths, answers)
    result: dict[str, Any] = {"model": subject, "metric": spec.metric, **figures}
    if spec.baseline:
        with model.disable_adapter():
            base_answers = generate_answers(model, tokenizer, prompts, spec, progress("base model", len(prompts)))
        base_figures, base_rows = _score(spec, truths, base_answers)
        result["baseline"] = base_figures
        for row, base in zip(rows, base_rows, strict=True):
            row["baseline_answer"] = base["answer"]
            row["baseline_prediction"] = base.get("prediction")
            row["baseline_grade"] = base["grade"]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PREDICTIONS_FILE
    partial = path.with_name(path.name + ".part")
    with open(partial, "w") as out:
        for index, row in enumerate(rows):
            out.write(json.dumps({"row": index, **row}) + "\n")
    partial.replace(path)
    result["predictions_path"] = str(path)
    if spec.metric == "numeric":
        charts = draw_charts(rows, out_dir, baseline=spec.baseline, subject=subject)
        result["charts"] = [chart.name for chart in charts]
    reporter.log("evaluation done", {k: v for k, v in result.items() if k != "predictions_path"})
    return result
