"""FP8 matrix products for the frozen 4-bit base's MLP (opt-in `performance.fp8`).

The base weights never change, so each 4-bit MLP weight is dequantized once and kept as two float8 (e4m3) copies,
one scaled per output row (for the forward, `x @ W.T`) and one per input column (for the backward, `grad @ W`).
Each product quantizes its activation (or incoming gradient) per row at run time and multiplies on the FP8 tensor
cores (`torch._scaled_mm`, rowwise scales, bf16 out), at the same memory as cached bf16 weights.

Only the MLP's products (gate, up, down: 81% of a Llama layer's base FLOPs) take it. Measured on an H100 at the
recipe's 16 x 182 tokens (`bench/fp8_matmul.py`, forward and input gradient, compiled), FP8 ran 1.43-1.52x as
fast as bf16 for them, 1.25-1.31x for q and o, and 0.67-0.69x (slower) for k and v, whose products are too small
to pay for quantizing their inputs; and with every product in FP8 the loss ran 0.10 above the recipe's over the
last 10 of 50 steps. The attention projections, which also carry the adapter, keep their bf16 products.

This is not the recipe's arithmetic: e4m3 keeps 3 mantissa bits, so each product's inputs are rounded to about
6% (the 4-bit weights are rounded once more, the activations at every step). The LoRA adapter's own products, the
LM head and the optimizer stay in bf16/fp32. So `auto` leaves it off; the benchmark reports the loss it reaches
beside the recipe's.
"""

import functools
from typing import Any

import torch

from worker.performance import dequantized_weight

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max
# Llama's MLP Linears by name (the recipe's models); other layers keep their products.
MLP_PRODUCTS = ("gate_proj", "up_proj", "down_proj")
# CUDA FP8 tensor cores arrived with Ada and Hopper (compute capability 8.9).
MIN_CAPABILITY = (8, 9)


def fp8_supported(device: str) -> bool:
    """Whether `device` multiplies float8 matrices: a CUDA GPU of compute capability 8.9 or later, or the CPU
    (slow there, but the same arithmetic, which is what the CPU tests check)."""
    if not device.startswith("cuda"):
        return True
    return torch.cuda.get_device_capability(torch.device(device)) >= MIN_CAPABILITY


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` [M, K] as e4m3 with one fp32 scale per row (`x ~= x8 * scale`); a row of zeros keeps a tiny scale."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def fp8_matmul(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """`x @ W.T` in bf16 from `x` [M, K] (quantized here, per row) and `weight` [N, K] in e4m3 with its per-row
    scales [1, N]."""
    x8, x_scale = quantize_rows(x)
    # `weight` is [N, K] row-major, so `weight.t()` is the column-major [K, N] operand _scaled_mm wants.
    return torch._scaled_mm(
        x8, weight.t(), scale_a=x_scale, scale_b=weight_scale, out_dtype=torch.bfloat16, use_fast_accum=True
    )


def fp8_input_grad(grad: torch.Tensor, weight_t: torch.Tensor, weight_t_scale: torch.Tensor) -> torch.Tensor:
    """`grad @ W` in bf16 from `grad` [M, N] (quantized here, per row) and `weight_t`, W.T stored [K, N] in e4m3
    with its per-row scales [1, K]. Accumulated at full precision: gradients add up over many small terms."""
    grad8, grad_scale = quantize_rows(grad)
    return torch._scaled_mm(grad8, weight_t.t(), scale_a=grad_scale, scale_b=weight_t_scale, out_dtype=torch.bfloat16)


class _Fp8Linear(torch.autograd.Function):
    """`x @ W.T` with FP8 operands; the weight is frozen, so only the input gets a gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        weight_t: torch.Tensor,
        weight_t_scale: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight_t, weight_t_scale)
        return fp8_matmul(x, weight, weight_scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight_t, weight_t_scale = ctx.saved_tensors
        return fp8_input_grad(grad.contiguous(), weight_t, weight_t_scale), None, None, None, None


def fp8_linear(x: torch.Tensor, module: Any) -> torch.Tensor:
    """The module's frozen base product of `x` (any leading dims) on FP8 operands, in bf16, plus its bias."""
    flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    out: torch.Tensor = _Fp8Linear.apply(  # type: ignore[no-untyped-call]
        flat, module.ftq_fp8_weight, module.ftq_fp8_scale, module.ftq_fp8_weight_t, module.ftq_fp8_scale_t
    )
    if module.bias is not None:
        out = out + module.bias.to(out.dtype)
    return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)


@functools.cache
def fp8_linear_class() -> type:
    """The Linear4bit subclass whose forward multiplies by the FP8 copies of its weight. One class for every
    layer, so `torch.compile` traces its forward once."""
    import bitsandbytes as bnb

    class Fp8Linear4bit(bnb.nn.Linear4bit):
        def forward(self, x: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
            """The base product on FP8 tensor cores."""
            return fp8_linear(x, self)

    return Fp8Linear4bit


def fp8_weight_copies(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A frozen weight W [N, K] as `fp8_matmul` and `fp8_input_grad` take it: W in e4m3 with its per-row scales
    [1, N] (the forward's operand), and W.T stored [K, N] in e4m3 with its per-row scales [1, K] (the backward's)."""
    with torch.no_grad():
        rows, row_scale = quantize_rows(weight)
        cols, col_scale = quantize_rows(weight.t().contiguous())
    return rows, row_scale.view(1, -1), cols, col_scale.view(1, -1)


def cache_fp8_weights(model: Any) -> int:
    """Give each 4-bit MLP Linear of `model` its FP8 weight copies (from its cached bf16 weight when it has one,
    which they replace; else dequantized once) and use them; returns the bytes they take."""
    import bitsandbytes as bnb

    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit) or not name.endswith(MLP_PRODUCTS):
            continue
        if module.in_features % 16 or module.out_features % 16:
            continue  # FP8 products need both of the weight's dimensions in multiples of 16
        cached = getattr(module, "ftq_dequantized_weight", None)
        source = dequantized_weight(module, torch.bfloat16) if cached is None else cached.to(torch.bfloat16)
        copies = fp8_weight_copies(source)
        del source, cached
        if hasattr(module, "ftq_dequantized_weight"):
            delattr(module, "ftq_dequantized_weight")
        weight, scale, weight_t, scale_t = copies
        module.register_buffer("ftq_fp8_weight", weight, persistent=False)
        module.register_buffer("ftq_fp8_scale", scale, persistent=False)
        module.register_buffer("ftq_fp8_weight_t", weight_t, persistent=False)
        module.register_buffer("ftq_fp8_scale_t", scale_t, persistent=False)
        module.__class__ = fp8_linear_class()
        total += sum(tensor.numel() * tensor.element_size() for tensor in copies)
    return total
