"""The README.md pushed with a final adapter: what it was trained from, how, and how it went."""

from typing import Any

from shared.spec import JobSpec, is_local_path


def render_model_card(job_id: str, spec: JobSpec, stats: dict[str, Any], progress: dict[str, Any]) -> str:
    """A Hub model card with front matter for the base model and dataset."""
    data = spec.training_rows
    dataset = data.id
    front = ["---", "library_name: peft", f"base_model: {spec.base_model}", "tags: [ftq, qlora, sft, trl]"]
    if not is_local_path(dataset):
        front.append(f"datasets: [{dataset}]")
    front.append("---")
    hp = spec.hyperparameters.model_dump()
    rows = "\n".join(f"| {key} | {value} |" for key, value in hp.items())
    lora, quant = spec.lora, spec.quantization
    body = f"""
# {spec.hub.repo_id if spec.hub else job_id}

A LoRA adapter for `{spec.base_model}`, trained by ftq job `{job_id}` with 4-bit QLoRA supervised fine-tuning
(TRL `SFTTrainer`), the loss taken only on the text after `{data.response_template}`.

- Dataset: `{dataset}` (split `{data.split}`), {stats.get("rows", "?")} rows, \
{stats.get("completion_tokens", "?")} completion tokens
- LoRA: r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, on {", ".join(lora.target_modules)}
- Quantization: {quant.bits}-bit {quant.quant_type}, double quant {quant.double_quant}, compute {quant.compute_dtype}
- Result: {progress.get("step", "?")} steps, final training loss {progress.get("loss", "?")}

| hyperparameter | value |
| --- | --- |
{rows}
"""
    return "\n".join(front) + "\n" + body
