"""How a job runs fast on the device it got: the choices (`plan_performance`, a pure function of the spec and the
measured free memory) and the one that changes the model (`cache_dequantized_weights`).

Of the choices `auto` makes, only `compile` changes the arithmetic of an optimizer step at the spec's own batch size,
and only its rounding order (pin `compile: false` for the recipe's exact numbers):
- gradient checkpointing off recomputes nothing, it keeps the activations instead;
- `torch.compile` of each decoder layer fuses its elementwise work into fewer kernels, in the same precision but
  another rounding order: on by default on one GPU, where it was measured to pay (see `_plan_compile`);
- Liger's kernels compute RMSNorm, RoPE and SwiGLU fused, in the same precision but another rounding order, and were
  no faster (so `auto` leaves them off; see `plan_performance`);
- FP8 products (opt-in) round each input to 3 mantissa bits;
- a cached dequantized weight is exactly what bitsandbytes dequantizes on every forward and backward
  (`dequantize_4bit(W).to(compute dtype)`, then a plain matmul), computed once because the base is frozen;
- a micro-batch with gradient accumulation (opt-in) keeps the effective batch;
- a lean bitsandbytes optimizer step (`worker.lean_optimizer`) computes the same updates with fewer launches and
  no wait per parameter.
"""

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from shared.spec import JobSpec

GB = 1024**3
# Activation memory of one token through one decoder layer, per unit of hidden size, in bytes, measured on
# Llama-3.1-8B with LoRA on q/k/v/o in bf16 (about 16 GB for 16 x 182 tokens without checkpointing).
ACTIVATION_BYTES_PER_HIDDEN = 44
CHECKPOINTED_BYTES_PER_HIDDEN = 4  # only each layer's input is kept, plus one layer recomputed at a time
LOGIT_BYTES = 8  # fp32 logits and their gradient, per token and vocabulary entry
MARGIN_BYTES = 2 * GB  # allocator fragmentation, CUDA workspace, optimizer state of the adapter
BNB_OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit")


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate needs to know of the base model."""

    hidden_size: int
    num_layers: int
    vocab_size: int
    quantized_params: int  # parameters held in 4-bit Linear layers


@dataclass(frozen=True)
class PerformancePlan:
    """What the worker chose, and why."""

    gradient_checkpointing: bool
    liger: bool
    cache_dequantized: bool
    compile: bool
    fp8: bool
    lean_optimizer: bool
    micro_batch: int  # on each rank
    gradient_accumulation_steps: int
    ranks: int  # GPUs (processes) training the job
    free_gb: float | None
    reasons: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        """The plan as event data."""
        return asdict(self)

    def describe(self) -> str:
        """One line for the job's event log."""
        flags = [
            f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}",
            f"liger {'on' if self.liger else 'off'}",
            f"cached dequantized weights {'on' if self.cache_dequantized else 'off'}",
            f"compile {'on' if self.compile else 'off'}",
            f"fp8 {'on' if self.fp8 else 'off'}",
            f"lean optimizer step {'on' if self.lean_optimizer else 'off'}",
            f"micro-batch {self.micro_batch} x {self.gradient_accumulation_steps}"
            + (f" on each of {self.ranks} GPUs" if self.ranks > 1 else ""),
        ]
        free = f" ({self.free_gb:.0f} GB free)" if self.free_gb is not None else ""
        return "performance: " + ", ".join(flags) + free


def activation_bytes(shape: ModelShape, tokens: int, *, checkpointing: bool) -> int:
    """Estimated activation memory of one micro-batch of `tokens` tokens."""
    per_hidden = CHECKPOINTED_BYTES_PER_HIDDEN if checkpointing else ACTIVATION_BYTES_PER_HIDDEN
    layers = shape.num_layers * shape.hidden_size * tokens * per_hidden
    return layers + tokens * shape.vocab_size * LOGIT_BYTES


def plan_performance(
    spec: JobSpec,
    shape: ModelShape,
    *,
    device: str,
    free_bytes: int | None,
    liger_available: bool,
    fp8_available: bool = False,
    compiler_available: bool = False,
    ranks: int = 1,
) -> PerformancePlan:
    """Choose each `auto` setting from the free memory of the device (after the model is loaded).

    With several `ranks` (one a GPU) each takes an equal share of every optimizer step's rows, so the effective
    batch stays the spec's (the spec guarantees that `batch_size` divides by the ranks).
    """
    perf, hp = spec.performance, spec.hyperparameters
    reasons: dict[str, str] = {}
    cuda = device.startswith("cuda")
    effective = hp.batch_size * hp.gradient_accumulation_steps // ranks  # this rank's rows per optimizer step
    micro, accumulation = hp.batch_size // ranks, hp.gradient_accumulation_steps
    budget = None if free_bytes is None else free_bytes - MARGIN_BYTES

    def fits(batch: int, checkpointing: bool, extra: int = 0) -> bool:
        need = activation_bytes(shape, batch * hp.max_length, checkpointing=checkpointing) + extra
        return budget is None or need <= budget

    if perf.micro_batch == "auto":
        micro = max((m for m in range(1, effective + 1) if effective % m == 0 and fits(m, False)), default=1)
        accumulation = effective // micro
        reasons["micro_batch"] = f"largest divisor of the effective batch {effective} that fits without checkpointing"
    elif isinstance(perf.micro_batch, int):
        if effective % perf.micro_batch:
            reasons["micro_batch"] = f"{perf.micro_batch} does not divide the effective batch {effective}: unchanged"
        else:
            micro, accumulation = perf.micro_batch, effective // perf.micro_batch
            reasons["micro_batch"] = "as asked"

    pinned = hp.gradient_checkpointing if perf.gradient_checkpointing == "auto" else perf.gradient_checkpointing
    if pinned is not None:
        checkpointing = bool(pinned)
        reasons["gradient_checkpointing"] = "as asked"
    else:
        checkpointing = not fits(micro, False)
        reasons["gradient_checkpointing"] = "activations fit" if not checkpointing else "activations do not fit"

    cache_bytes = 2 * shape.quantized_params
    if perf.cache_dequantized != "auto":
        cache = bool(perf.cache_dequantized)
        reasons["cache_dequantized"] = "as asked"
    else:
        cache = fits(micro, checkpointing, cache_bytes)
        reasons["cache_dequantized"] = (
            f"{cache_bytes / GB:.1f} GB {'fit' if cache else 'do not fit'} beside the activations"
        )

    if perf.liger != "auto":
        liger = bool(perf.liger) and cuda and liger_available
        reasons["liger"] = "as asked" if liger == perf.liger else "asked, but needs CUDA and liger-kernel"
    else:
        # Measured on an H200 (bench/results/2026-11-29-nvidia-h200-8b-run4-*): with the dequantized weights
        # cached, Liger's kernels train no faster (10,735 against 10,775 tokens/s) and round differently (the
        # loss is 2.5e-2 off the recipe's after 50 steps, where without them it is bit-identical).
        liger = False
        reasons["liger"] = "off unless asked: not exact, and no faster beside cached dequantized weights"

    compile_model = _plan_compile(perf.compile, compiler_available and cuda, checkpointing, ranks, reasons)
    # The MLP's FP8 copies take the bytes its bf16 copies would (two one-byte copies for one two-byte one).
    fp8 = _plan_fp8(perf.fp8, fp8_available, fits(micro, checkpointing, cache_bytes), reasons)
    if fp8 and not compile_model:
        # bench/results/2026-12-07-nvidia-h100-fp8-matmul.json: eager, each input's quantization is kernels of its
        # own, and the MLP's products took 1.32-1.44x the bf16 time (compiled: 1.43-1.52x faster).
        reasons["fp8"] += "; without compile it is slower than bf16 (the inputs' quantization is not fused)"
    lean = _plan_lean_optimizer(perf.lean_optimizer, hp.optimizer, cuda, reasons)
    free_gb = None if free_bytes is None else free_bytes / GB
    return PerformancePlan(
        checkpointing, liger, cache, compile_model, fp8, lean, micro, accumulation, ranks, free_gb, reasons
    )


def _plan_compile(asked: str | bool, available: bool, checkpointing: bool, ranks: int, reasons: dict[str, str]) -> bool:
    # Measured on an H100 (bench/results/2026-12-07-nvidia-h100-8b-run2-{compile-only,default}.json): the first
    # step about 14 s later, every step after it 25% shorter (0.189 against 0.251 s); the loss 0.013 from the eager
    # path's on average over 50 steps (another rounding order in the fused kernels), its last ten steps' mean within
    # 0.002. run3-auto-compile.json is this default, as a job gets it, beside the reference: the same figures.
    if asked != "auto":
        reasons["compile"] = "as asked"
        return bool(asked)
    if not available:
        reasons["compile"] = "needs CUDA and Triton"
        return False
    if checkpointing or ranks > 1:
        reasons["compile"] = "off: measured only on one GPU with the activations kept"
        return False
    reasons["compile"] = "one GPU, activations kept: seconds of compiling, then steps about a quarter shorter"
    return True


def _plan_fp8(asked: str | bool, available: bool, fits: bool, reasons: dict[str, str]) -> bool:
    if asked is not True:
        reasons["fp8"] = "as asked" if asked is False else "off unless asked: faster, but not exact"
        return False
    if not available:
        reasons["fp8"] = "asked, but this GPU has no FP8 tensor cores (compute capability 8.9+)"
        return False
    reasons["fp8"] = "as asked" if fits else "asked, but the FP8 weight copies do not fit beside the activations"
    return fits


def _plan_lean_optimizer(asked: str | bool, optimizer: str, cuda: bool, reasons: dict[str, str]) -> bool:
    if optimizer not in BNB_OPTIMIZERS:
        reasons["lean_optimizer"] = f"{optimizer} is not a bitsandbytes optimizer"
        return False
    if asked != "auto":
        reasons["lean_optimizer"] = "as asked"
        return bool(asked)
    reasons["lean_optimizer"] = "CUDA: one synchronization a step instead of one a parameter" if cuda else "no CUDA"
    return cuda


def free_memory(device: str) -> int | None:
    """Free bytes on a CUDA device (None on the CPU: host memory is not the limit for the tiny models run there)."""
    if not device.startswith("cuda"):
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def compiler_available() -> bool:
    """Whether `torch.compile` can build GPU kernels here: CUDA and Triton."""
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def liger_available() -> bool:
    """Whether the liger-kernel package is installed."""
    return importlib.util.find_spec("liger_kernel") is not None


def model_shape(model: Any) -> ModelShape:
    """The shape of a loaded base model."""
    import bitsandbytes as bnb

    quantized = sum(
        module.in_features * module.out_features for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)
    )
    config = model.config
    return ModelShape(config.hidden_size, config.num_hidden_layers, config.vocab_size, quantized)


@functools.cache
def cached_dequantized_class() -> type:
    """The Linear4bit subclass whose forward uses the weight dequantized once (the base is frozen). One class for
    every layer, so `torch.compile` traces its forward once rather than once per layer."""
    import bitsandbytes as bnb

    class CachedDequantizedLinear4bit(bnb.nn.Linear4bit):
        def forward(self, x: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
            """As bitsandbytes computes it: input in the compute dtype, a plain linear, output in the input's
            dtype."""
            weight = self.ftq_dequantized_weight
            bias = None if self.bias is None else self.bias.to(weight.dtype)
            return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

    return CachedDequantizedLinear4bit


def dequantized_weight(module: Any, dtype: torch.dtype) -> torch.Tensor:
    """A 4-bit Linear's weight in `dtype`, as bitsandbytes dequantizes it for every product."""
    import bitsandbytes.functional as bnbf

    with torch.no_grad():
        weight: torch.Tensor = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state).to(dtype)
    return weight


def cache_dequantized_weights(model: Any, dtype: torch.dtype) -> int:
    """Give every 4-bit Linear of `model` a dequantized copy of its weight (in the compute dtype) and use it;
    returns the bytes."""
    import bitsandbytes as bnb

    total = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            dequantized = dequantized_weight(module, dtype)
            module.register_buffer("ftq_dequantized_weight", dequantized, persistent=False)
            module.__class__ = cached_dequantized_class()
            total += dequantized.numel() * dequantized.element_size()
    return total


def copy_base_weights(model: Any, plan: PerformancePlan, dtype: torch.dtype) -> dict[str, int]:
    """Give the 4-bit base the weight copies the plan chose: dequantized in `dtype` (`cache_dequantized`), then the
    MLP's in FP8 (`fp8`, in place of theirs); the bytes each kind of copy takes."""
    from worker.fp8 import cache_fp8_weights

    if plan.cache_dequantized:
        cache_dequantized_weights(model, dtype)
    fp8 = cache_fp8_weights(model) if plan.fp8 else 0
    dequantized = sum(
        module.ftq_dequantized_weight.nbytes for module in model.modules() if hasattr(module, "ftq_dequantized_weight")
    )
    return {"dequantized": dequantized, "fp8": fp8}


def compile_decoder_layers(model: Any, backend: str | Callable[..., Any] = "inductor") -> int:
    """`torch.compile` each decoder layer in place (regional compilation): the layers share one compiled graph, so
    it compiles once rather than per layer or for the whole model, and its fused kernels replace many small
    launches (`backend`: torch.compile's; the tests pass one that counts the graphs). Returns how many layers were
    compiled."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile(backend=backend)
    return len(layers)
