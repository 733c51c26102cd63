"""Pure mappings from the job spec onto transformers, PEFT and TRL objects, and the loaders that use them."""

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    PreTrainedModel,
)
from trl import SFTConfig

from shared.errors import JobFailure
from shared.spec import Hyperparameters, JobSpec, LoraSpec, QuantizationSpec
from worker.performance import PerformancePlan
from worker.sources import adapter_source, model_source

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def build_quant_config(quant: QuantizationSpec) -> BitsAndBytesConfig:
    """The bitsandbytes 4-bit config of the spec."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=DTYPES[quant.compute_dtype],
    )


def build_lora_config(lora: LoraSpec) -> LoraConfig:
    """The PEFT LoRA config of the spec."""
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_sft_config(
    hp: Hyperparameters,
    quant: QuantizationSpec,
    output_dir: Path,
    plan: PerformancePlan,
    *,
    use_cpu: bool,
    run_name: str,
    report_to: str = "none",
) -> SFTConfig:
    """TRL's SFTConfig for the spec: the course's recipe, with completion-only loss on pre-tokenized rows, run
    as the performance plan chose (the effective batch is the spec's)."""
    return SFTConfig(
        output_dir=str(output_dir),
        run_name=run_name,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps or -1,
        per_device_train_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler,
        warmup_steps=hp.warmup_ratio,  # a float below 1 is a ratio of the total steps
        optim=hp.optimizer,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        max_length=hp.max_length,
        seed=hp.seed,
        data_seed=hp.seed,
        save_strategy="steps",
        save_steps=hp.save_steps,
        logging_steps=hp.logging_steps,
        # The filter asks the GPU whether each micro-batch's loss is finite: a wait every step. Unfiltered, a
        # diverging loss is logged as it is (stored as null), and the arithmetic is the same.
        logging_nan_inf_filter=False,
        activation_checkpointing=plan.gradient_checkpointing,  # the new name of gradient_checkpointing
        use_liger_kernel=plan.liger,
        bf16=quant.compute_dtype == "bfloat16",
        fp16=quant.compute_dtype == "float16" and not use_cpu,
        use_cpu=use_cpu,
        # Rows arrive tokenized with a completion mask; TRL only masks them when told explicitly.
        completion_only_loss=True,
        include_num_input_tokens_seen="no",  # CompletionTokenTrainer counts completion tokens there instead
        report_to=report_to,
        disable_tqdm=True,
        # Several GPUs: each rank loads the same frozen base, so its buffers (the cached dequantized weights among
        # them, gigabytes) need no broadcast before every forward; and every adapter parameter gets a gradient.
        ddp_broadcast_buffers=False,
        ddp_find_unused_parameters=False,
        # No save_total_limit: every checkpoint the API lists must stay downloadable (an adapter is small).
    )


def load_quantized_model(spec: JobSpec, roots: list[Path], device: str, token: str | None = None) -> PreTrainedModel:
    """The base model, loaded through `from_pretrained` with its Linear layers in 4-bit."""
    ref = spec.base_model
    source = model_source(ref, roots)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            quantization_config=build_quant_config(spec.quantization),
            dtype=DTYPES[spec.quantization.compute_dtype],
            device_map={"": device},
            trust_remote_code=False,
            token=token,
        )
    except OSError as exc:
        raise JobFailure(f"base model {ref!r} not found: {exc}", code="model_not_found", param="base_model") from exc
    model.config.use_cache = False
    return model


def load_adapter(model: PreTrainedModel, ref: str, roots: list[Path], token: str | None) -> PeftModel:
    """The base model with the adapter loaded on it, frozen, as PEFT saved it."""
    source = adapter_source(ref, roots)
    try:
        return PeftModel.from_pretrained(model, source, is_trainable=False, token=token)
    except (OSError, ValueError, RuntimeError) as exc:
        # RuntimeError: the adapter's shapes do not fit this base model (trained on another one).
        raise JobFailure(
            f"adapter {ref!r} cannot be loaded on {model.name_or_path!r}: {type(exc).__name__}: {exc}",
            code="adapter_not_found" if isinstance(exc, OSError) else "adapter_invalid",
            param="adapter",
        ) from exc


def describe_quantization(model: Any, quant: QuantizationSpec) -> dict[str, Any]:
    """What the loaded model really holds: how many Linear layers are bitsandbytes 4-bit, and in which type."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    quant_types = sorted({m.weight.quant_type for m in layers})
    return {
        "bits": quant.bits,
        "quant_type": quant_types[0] if len(quant_types) == 1 else quant_types,
        "double_quant": quant.double_quant,
        "compute_dtype": quant.compute_dtype,
        "linear_4bit_layers": len(layers),
    }
