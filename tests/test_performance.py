"""The worker's speed choices: what `auto` picks from free memory, that pinned choices win, that a cached
dequantized weight computes exactly what bitsandbytes computes (and an FP8 one to within its rounding), and that
token counts stay on the device until read.
The lean optimizer step's exactness is in test_lean_optimizer.py."""

from typing import Any

import pytest
import torch

from shared.spec import JobSpec
from worker.performance import GB, ModelShape, cache_dequantized_weights, copy_base_weights, plan_performance
from worker.progress import TokenCounter

LLAMA_8B = ModelShape(hidden_size=4096, num_layers=32, vocab_size=128256, quantized_params=6_979_321_856)


def spec(**sections: Any) -> JobSpec:
    """The course's spec with some sections changed."""
    return JobSpec.model_validate(
        {"base_model": "meta-llama/Llama-3.1-8B", "dataset": {"id": "ed-donner/pricer-data"}, **sections}
    )


def test_a_large_gpu_keeps_activations_and_caches_dequantized_weights() -> None:
    plan = plan_performance(spec(), LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True)

    assert (plan.gradient_checkpointing, plan.cache_dequantized, plan.liger) == (False, True, False)
    assert plan.reasons["liger"].startswith("off unless asked: not exact")
    assert (plan.micro_batch, plan.gradient_accumulation_steps) == (16, 1), "the spec's batch is kept"
    assert "gradient checkpointing off" in plan.describe() and "130 GB free" in plan.describe()


def test_a_small_gpu_falls_back_to_the_memory_lean_path() -> None:
    plan = plan_performance(spec(), LLAMA_8B, device="cuda:0", free_bytes=12 * GB, liger_available=False)

    assert (plan.gradient_checkpointing, plan.cache_dequantized, plan.liger) == (True, False, False)


def test_a_middle_gpu_drops_the_cache_before_checkpointing() -> None:
    plan = plan_performance(spec(), LLAMA_8B, device="cuda:0", free_bytes=30 * GB, liger_available=True)

    assert (plan.gradient_checkpointing, plan.cache_dequantized) == (False, False)


def test_pinned_choices_win_over_auto_and_the_old_field_still_counts() -> None:
    pinned = spec(performance={"gradient_checkpointing": True, "cache_dequantized": False, "liger": False})
    old = spec(hyperparameters={"gradient_checkpointing": True})

    first = plan_performance(pinned, LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True)
    second = plan_performance(old, LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True)

    assert (first.gradient_checkpointing, first.cache_dequantized, first.liger) == (True, False, False)
    assert second.gradient_checkpointing is True


def test_liger_runs_only_when_asked_and_only_where_it_can() -> None:
    asked = spec(performance={"liger": True})

    on_cuda = plan_performance(asked, LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True)
    missing = plan_performance(asked, LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=False)
    on_cpu = plan_performance(asked, LLAMA_8B, device="cpu", free_bytes=None, liger_available=True)

    assert (on_cuda.liger, missing.liger, on_cpu.liger) == (True, False, False)
    assert missing.reasons["liger"] == "asked, but needs CUDA and liger-kernel"


def test_compile_runs_by_default_on_one_cuda_gpu_with_triton_and_the_activations_kept() -> None:
    def plan(performance: dict[str, Any] | None = None, **where: Any) -> Any:
        place = {"device": "cuda:0", "free_bytes": 130 * GB, "compiler_available": True, **where}
        return plan_performance(spec(performance=performance or {}), LLAMA_8B, liger_available=True, **place)

    large = plan()
    cpu, no_triton = plan(device="cpu", free_bytes=None), plan(compiler_available=False)
    small, two_gpus = plan(free_bytes=12 * GB), plan(ranks=2)
    pinned_off, asked_on_cpu = plan({"compile": False}), plan({"compile": True}, device="cpu", free_bytes=None)
    fp8 = plan({"fp8": True}, fp8_available=True)

    assert (large.compile, large.gradient_checkpointing) == (True, False)
    assert "compile on" in large.describe()
    assert (cpu.compile, no_triton.compile) == (False, False)
    assert cpu.reasons["compile"] == "needs CUDA and Triton"
    assert (small.compile, small.gradient_checkpointing) == (False, True), "measured only with activations kept"
    assert two_gpus.compile is False
    assert (pinned_off.compile, pinned_off.reasons["compile"]) == (False, "as asked")
    assert asked_on_cpu.compile is True
    assert (fp8.compile, fp8.fp8, fp8.reasons["fp8"]) == (True, True, "as asked"), "compiled: no eager warning"


def test_throughput_mode_takes_the_largest_micro_batch_that_keeps_the_effective_batch() -> None:
    wide = spec(
        hyperparameters={"batch_size": 8, "gradient_accumulation_steps": 8}, performance={"micro_batch": "auto"}
    )

    roomy = plan_performance(wide, LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True)
    tight = plan_performance(wide, LLAMA_8B, device="cuda:0", free_bytes=40 * GB, liger_available=True)

    assert (roomy.micro_batch, roomy.gradient_accumulation_steps) == (64, 1)
    assert tight.micro_batch * tight.gradient_accumulation_steps == 64 and tight.micro_batch < 64


def test_on_two_gpus_each_takes_half_of_every_step_so_the_effective_batch_stays_the_specs() -> None:
    course, wide = spec(), spec(hyperparameters={"batch_size": 8, "gradient_accumulation_steps": 8})
    wide_auto = spec(
        hyperparameters={"batch_size": 8, "gradient_accumulation_steps": 8}, performance={"micro_batch": "auto"}
    )

    plans = [
        plan_performance(s, LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True, ranks=2)
        for s in (course, wide, wide_auto)
    ]

    assert [(p.micro_batch, p.gradient_accumulation_steps, p.ranks) for p in plans] == [
        (8, 1, 2),
        (4, 8, 2),
        (32, 1, 2),
    ]
    assert "micro-batch 8 x 1 on each of 2 GPUs" in plans[0].describe()


@pytest.mark.parametrize("bad", [0, 2000, "fast"])
def test_a_bad_micro_batch_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="micro_batch"):
        spec(performance={"micro_batch": bad})


def test_a_cached_dequantized_weight_computes_exactly_what_bitsandbytes_does() -> None:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(
        64, 48, bias=True, compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True
    )
    layer.load_state_dict(
        {"weight": torch.randn(48, 64, dtype=torch.bfloat16), "bias": torch.randn(48, dtype=torch.bfloat16)}
    )
    layer = layer.to("cpu")  # quantizes the weight
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()

    reference = layer(x1)
    reference.float().pow(2).sum().backward()
    model = torch.nn.Sequential(layer)
    cached_bytes = cache_dequantized_weights(model, torch.bfloat16)
    cached = layer(x2)
    cached.float().pow(2).sum().backward()

    assert cached_bytes == 48 * 64 * 2
    assert torch.equal(cached, reference)
    assert torch.equal(x2.grad, x1.grad)


def test_the_lean_optimizer_step_is_planned_on_cuda_for_bitsandbytes_optimizers_only() -> None:
    course = plan_performance(spec(), LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True)
    torch_adamw = spec(hyperparameters={"optimizer": "adamw_torch"})
    other = plan_performance(torch_adamw, LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True)
    on_cpu = plan_performance(spec(), LLAMA_8B, device="cpu", free_bytes=None, liger_available=False)
    pinned = spec(performance={"lean_optimizer": False})
    off = plan_performance(pinned, LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True)

    assert (course.lean_optimizer, other.lean_optimizer, on_cpu.lean_optimizer, off.lean_optimizer) == (
        True,
        False,
        False,
        False,
    )
    assert "lean optimizer step on" in course.describe()
    assert other.reasons["lean_optimizer"] == "adamw_torch is not a bitsandbytes optimizer"


def test_token_counts_accumulate_on_the_device_and_reach_the_host_on_read() -> None:
    counter = TokenCounter()
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, 8, -100]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])

    counter.add(labels, mask)
    counter.add(labels, None)

    assert counter.input_tokens == 0, "nothing is brought to the host before a read"
    assert counter.read() == 8 and counter.input_tokens == 7 + 8
    assert counter.read() == 0 and counter.input_tokens == 15


def test_fp8_runs_only_when_asked_where_the_device_has_it_and_the_memory_allows() -> None:
    asked = spec(performance={"fp8": True})

    default = plan_performance(spec(), LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True)
    on = plan_performance(
        asked, LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True, fp8_available=True
    )
    old_gpu = plan_performance(asked, LLAMA_8B, device="cuda:0", free_bytes=130 * GB, liger_available=True)
    small = plan_performance(
        asked, LLAMA_8B, device="cuda:0", free_bytes=30 * GB, liger_available=True, fp8_available=True
    )

    assert (default.fp8, default.reasons["fp8"]) == (False, "off unless asked: faster, but not exact")
    assert "without compile it is slower" in on.reasons["fp8"]
    assert (on.fp8, on.cache_dequantized) == (True, True), "the attention's products keep their bf16 copies"
    assert "fp8 on" in on.describe()
    assert (old_gpu.fp8, old_gpu.cache_dequantized) == (False, True)
    assert "no FP8 tensor cores" in old_gpu.reasons["fp8"]
    assert (small.fp8, small.gradient_checkpointing) == (False, False)
    assert "do not fit" in small.reasons["fp8"]


def test_an_fp8_mlp_layer_computes_the_bf16_product_to_within_e4m3_rounding_and_attention_stays_bf16() -> None:
    import bitsandbytes as bnb

    def layer() -> Any:
        torch.manual_seed(0)
        made = bnb.nn.Linear4bit(256, 96, bias=True, compute_dtype=torch.bfloat16, quant_type="nf4")
        made.load_state_dict(
            {"weight": torch.randn(96, 256, dtype=torch.bfloat16) * 0.05, "bias": torch.randn(96, dtype=torch.bfloat16)}
        )
        return made.to("cpu")  # quantizes the weight

    exact, fp8, attention = layer(), layer(), layer()
    odd = bnb.nn.Linear4bit(256, 90, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4").to("cpu")
    cache_dequantized_weights(torch.nn.Sequential(exact), torch.bfloat16)
    model = torch.nn.ModuleDict({"q_proj": attention, "up_proj": fp8, "down_proj": odd})
    plan = plan_performance(
        spec(performance={"fp8": True}),
        LLAMA_8B,
        device="cpu",
        free_bytes=None,
        liger_available=False,
        fp8_available=True,
    )
    copies = copy_base_weights(model, plan, torch.bfloat16)
    x = torch.randn(3, 7, 256, dtype=torch.bfloat16)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = exact(x1), fp8(x2)
    upstream = torch.randn_like(want)
    (want.float() * upstream).sum().backward()
    (got.float() * upstream).sum().backward()

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())

    assert (plan.cache_dequantized, plan.fp8) == (True, True)
    # q's and the odd layer's bf16 copies; up's two one-byte copies and their fp32 scales.
    assert copies == {"dequantized": (96 + 90) * 256 * 2, "fp8": 2 * 96 * 256 + 4 * (96 + 256)}
    assert type(odd).__name__ == "CachedDequantizedLinear4bit", "90 outputs: not a multiple of 16, so bf16"
    assert not hasattr(fp8, "ftq_dequantized_weight"), "the FP8 copies replace the bf16 one"
    assert type(attention).__name__ == "CachedDequantizedLinear4bit", "attention keeps its bf16 product"
    assert got.shape == want.shape and got.dtype == torch.bfloat16
    # e4m3 keeps 3 mantissa bits: each operand is off by up to 1/16, a product's error averages far below that.
    assert 0 < relative(got, want) < 0.05
    assert x1.grad is not None and x2.grad is not None
    assert 0 < relative(x2.grad, x1.grad) < 0.05
