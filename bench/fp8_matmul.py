"""The frozen base's matrix products in bf16 against ftq's FP8 path (`worker.fp8`), at Llama-3.1-8B's shapes.

For each 4-bit Linear of a decoder layer (q, k, v, o, gate, up, down), with a batch of `--rows` x `--tokens`
tokens: the forward and the input's gradient, timed with CUDA events over `--iters` repetitions after a warm-up,
eager and under `torch.compile`, and the FP8 result's error relative to bf16. Prints one JSON line per shape and
a table; `--out` keeps the JSON.

    python3 bench/fp8_matmul.py --out $OUT/fp8-matmul.json
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.fp8 import fp8_input_grad, fp8_matmul, fp8_weight_copies  # noqa: E402

HIDDEN, INTERMEDIATE, KV = 4096, 14336, 1024
SHAPES = {  # name: (in_features, out_features)
    "q": (HIDDEN, HIDDEN),
    "k": (HIDDEN, KV),
    "v": (HIDDEN, KV),
    "o": (HIDDEN, HIDDEN),
    "gate": (HIDDEN, INTERMEDIATE),
    "up": (HIDDEN, INTERMEDIATE),
    "down": (INTERMEDIATE, HIDDEN),
}


def bf16_step(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Forward and input gradient in bf16, as the cached dequantized path computes them."""
    return torch.nn.functional.linear(x, weight), grad @ weight


def fp8_step(x: torch.Tensor, weights: tuple[torch.Tensor, ...], grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same as `worker.fp8`'s autograd function computes them (each operand quantized per row)."""
    weight, weight_scale, weight_t, weight_t_scale = weights
    return fp8_matmul(x, weight, weight_scale), fp8_input_grad(grad, weight_t, weight_t_scale)


def time_ms(fn: Callable[[], object], iters: int) -> float:
    """Mean milliseconds of `fn` on the GPU."""
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||, in fp32."""
    return float((got.float() - want.float()).norm() / want.float().norm())


def main() -> None:
    """Measure every shape and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--tokens", type=int, default=182)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.manual_seed(0)
    m = args.rows * args.tokens
    results = []
    for name, (k, n) in SHAPES.items():
        weight = (torch.randn(n, k, device="cuda") * k**-0.5).to(torch.bfloat16)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        grad = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        fp8_weights = fp8_weight_copies(weight)
        compiled = torch.compile(fp8_step)
        want, got = bf16_step(x, weight, grad), fp8_step(x, fp8_weights, grad)
        row = {
            "shape": name,
            "m": m,
            "k": k,
            "n": n,
            "bf16_ms": time_ms(lambda: bf16_step(x, weight, grad), args.iters),  # noqa: B023
            "fp8_eager_ms": time_ms(lambda: fp8_step(x, fp8_weights, grad), args.iters),  # noqa: B023
            "fp8_compiled_ms": time_ms(lambda: compiled(x, fp8_weights, grad), args.iters),  # noqa: B023
            "forward_rel_err": relative_error(got[0], want[0]),
            "grad_rel_err": relative_error(got[1], want[1]),
        }
        row["tflops_bf16"] = 4 * m * k * n / row["bf16_ms"] / 1e9
        print(json.dumps(row), flush=True)
        results.append(row)
    total = {key: sum(r[key] for r in results) for key in ("bf16_ms", "fp8_eager_ms", "fp8_compiled_ms")}
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, {m} tokens; forward + input gradient, ms")
    print("| shape | k x n | bf16 | fp8 eager | fp8 compiled | speedup (compiled) | rel err fwd / grad |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['shape']} | {r['k']} x {r['n']} | {r['bf16_ms']:.3f} | {r['fp8_eager_ms']:.3f} | "
            f"{r['fp8_compiled_ms']:.3f} | {r['bf16_ms'] / r['fp8_compiled_ms']:.2f} | "
            f"{r['forward_rel_err']:.3f} / {r['grad_rel_err']:.3f} |"
        )
    print(
        f"| a decoder layer | | {total['bf16_ms']:.3f} | {total['fp8_eager_ms']:.3f} | {total['fp8_compiled_ms']:.3f}"
        f" | {total['bf16_ms'] / total['fp8_compiled_ms']:.2f} | |"
    )
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
