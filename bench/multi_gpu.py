"""Multi-GPU scaling: ftq's worker training path data-parallel on 1, 2, ... GPUs, the same job on each.

The driver builds the model (train_throughput.build_model: a Llama of the shape with seeded random weights) and the
pricer rows (train_throughput.make_rows: 170-182 tokens each) once, then for each N in --gpus starts
`python -m torch.distributed.run --standalone --nproc-per-node N bench/multi_gpu.py --rank-run ...` in the driver's
environment. Every rank builds ftq's trainer (train_throughput.build_ftq: `worker.training.build_trainer` on a
JobSpec with the course's defaults, spec batch 16, seed 42; on N ranks the worker gives each a micro-batch of 16/N,
so the effective batch and the arithmetic stay those of one GPU) and trains --steps steps, timed as
train_throughput.measure() times them. Rank 0 gathers every rank's figures and writes them for the driver.

For each N: global non-pad tokens/s (all ranks' tokens in the steps after warm-up over the slowest rank's timed
window), seconds per step (mean and median after warm-up), peak GPU memory of rank 0, time to first step, the loss
of every step (read from the device after training and averaged over the ranks: the Trainer's logged loss, without
a host sync at every step), and for N > 1 the speedup over N=1, the scaling efficiency tokens/s(N) / (N x
tokens/s(1)) and the largest loss gap to N=1 over the common steps. The whole result goes to one JSON file (`--out`),
rewritten after every run.

    python bench/multi_gpu.py --shape tiny --steps 4 --warmup 1 --gpus 1,2      # CPU (gloo), about a minute
    python bench/multi_gpu.py --shape 8b --steps 60 --warmup 10 --gpus 1,2      # 2 GPUs (see bench/README.md)

`--ddp auto,ddp-defaults` runs each N > 1 once as ftq's trainer wraps the model in DDP (broadcast_buffers and
find_unused_parameters off, see worker/recipe.py) and once more with DDP's defaults (see DDP_VARIANTS): ftq's cached
dequantized weights are module buffers, which DDP by default sends from rank 0 to the other ranks before every
forward.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import train_throughput as tt  # noqa: E402  (bench/ on the path first; it puts the repo there too)

DEFAULT_STEPS, DEFAULT_WARMUP = 60, 10
TINY_STEPS, TINY_WARMUP = 4, 1
RANK_TIMEOUT_S = 1800.0  # one N's whole run (start, model load, training), then its processes are stopped
KILL_GRACE_S = 15.0
# What each --ddp variant changes in the DistributedDataParallelKwargs the Trainer built (read when train() wraps the
# model). `auto` is ftq's own (no buffer broadcast, no unused-parameter search); `ddp-defaults` is DDP's and the
# Trainer's for a PEFT model: the cached dequantized weights (module buffers) are sent from rank 0 before each forward.
DDP_VARIANTS: dict[str, dict[str, bool]] = {
    "auto": {},
    "ddp-defaults": {"broadcast_buffers": True, "find_unused_parameters": True},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line (the driver's, and the hidden one of each rank)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(tt.SHAPES), default="tiny", help="model shape (8b and 1b need CUDA)")
    p.add_argument("--steps", type=int, help=f"optimizer steps per run (default {DEFAULT_STEPS}; tiny: {TINY_STEPS})")
    p.add_argument("--warmup", type=int, help=f"first steps left out of the timing (default {DEFAULT_WARMUP}; tiny: 1)")
    p.add_argument("--gpus", default="1,2", help="comma-separated rank counts to run, one after the other (1,2)")
    p.add_argument("--batch", type=int, default=16, help="the spec's rows per step, split over the ranks (16)")
    p.add_argument("--model-dir", type=Path, help="where the random model is built once and reused")
    p.add_argument("--rows", type=Path, help="pricer .jsonl with a 'text' column (default: shared data, else bundled)")
    p.add_argument("--out", type=Path, help="result file (default: <out-dir>/<date>-<gpu>-<shape>-multi-gpu.json)")
    p.add_argument("--out-dir", type=Path, default=tt.RESULTS, help="folder of the default result file")
    p.add_argument("--work-dir", type=Path, help="rows, job directories and rank results (default: a temporary one)")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 TFLOP/s of one GPU, for MFU")
    p.add_argument(
        "--logging-steps",
        type=int,
        help="log the loss every this many steps (default: the spec's 50; 1 adds a host sync at every step)",
    )
    p.add_argument(
        "--rank-timeout", type=float, default=RANK_TIMEOUT_S, help="seconds one N may run before it is stopped"
    )
    p.add_argument(
        "--ftq-performance",
        type=json.loads,
        default={},
        help="ftq's spec.performance as JSON (default: the worker chooses)",
    )
    p.add_argument(
        "--ddp",
        default="auto",
        help="comma-separated DDP settings to run each N > 1 with: auto (as ftq's trainer wraps the model),"
        " ddp-defaults (buffers broadcast before every forward, unused parameters searched)",
    )
    # What the driver passes to each rank (torchrun starts this script once per rank with --rank-run).
    p.add_argument("--rank-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--build-model", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--job-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    tiny = args.shape == "tiny"
    args.accumulation = 1  # build_ftq's gradient accumulation: every run here keeps one micro-batch a step
    args.steps = args.steps if args.steps is not None else (TINY_STEPS if tiny else DEFAULT_STEPS)
    args.warmup = args.warmup if args.warmup is not None else (TINY_WARMUP if tiny else DEFAULT_WARMUP)
    if args.steps <= args.warmup:
        p.error("--steps must be larger than --warmup: at least one timed step is needed")
    if args.warmup < 1:
        p.error("--warmup must be at least 1: step 1 allocates the optimizer state and is never typical")
    try:
        args.gpu_counts = sorted({int(n) for n in args.gpus.split(",") if n.strip()})
    except ValueError:
        p.error(f"--gpus takes comma-separated counts, not {args.gpus!r}")
    if not args.gpu_counts or min(args.gpu_counts) < 1:
        p.error("--gpus needs counts of at least 1")
    args.ddp_variants = list(dict.fromkeys(v.strip() for v in args.ddp.split(",") if v.strip()))
    if not args.ddp_variants or any(v not in DDP_VARIANTS for v in args.ddp_variants):
        p.error(f"--ddp takes a comma-separated list of {', '.join(DDP_VARIANTS)}")
    for n in args.gpu_counts:
        if args.batch % n:
            p.error(f"--batch {args.batch} does not divide by {n} ranks: the spec's batch is split over them")
    return args


# ---------------------------------------------------------------------------------------------------------------
# One rank (under torchrun)


def _gather(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (just `[obj]` without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def rank_run(args: argparse.Namespace) -> int:
    """Build ftq's trainer in this rank, train it timed like train_throughput.measure(), gather on rank 0."""
    import torch
    import torch.distributed as dist

    from worker.ranks import local_rank, rank, world_size

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())  # memory figures and clock syncs are this rank's GPU's
    tt.preload("ftq")
    flop_params = tt.matmul_params(args.model_dir)
    kept: dict[str, Any] = {}

    def build() -> tuple[Any, tt.CollectingReporter | None]:
        trainer, reporter = tt.build_ftq(args.model_dir, args.rows_file, args, args.job_dir)
        kept["trainer"] = trainer  # read after training: how the Trainer really ran (DDP or not, micro-batch)
        if args.logging_steps:
            trainer.args.logging_steps = args.logging_steps
        handler = trainer.accelerator.ddp_handler
        for key, value in DDP_VARIANTS[args.ddp_variants[0]].items():
            if handler is not None:
                setattr(handler, key, value)  # read when train() wraps the model
        return trainer, reporter

    started_at = time.time()  # wall clock, for the driver's launch-to-first-step figure
    mine = tt.measure("ftq", build, args, cuda, flop_params)
    trainer = kept.pop("trainer")
    mine.update(
        rank=rank(),
        world_size=world_size(),
        started_at=started_at,
        device=str(trainer.args.device),
        gpu=torch.cuda.get_device_name() if cuda else "cpu",
        micro_batch=trainer.args.per_device_train_batch_size,
        gradient_accumulation_steps=trainer.args.gradient_accumulation_steps,
        distributed_type=str(trainer.accelerator.distributed_type),
        wrapped=type(trainer.model_wrapped).__name__,
        ddp=ddp_settings(trainer.model_wrapped),
        log_history=[
            {k: h[k] for k in ("step", "loss", "train_loss", "grad_norm", "learning_rate") if k in h}
            for h in trainer.state.log_history
            if "loss" in h or "train_loss" in h
        ],
        process_group=dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
    )
    del trainer
    ranks = _gather(mine)
    if rank() == 0:
        tt.write_result(args.result, combine(ranks, args, cuda))
    if dist.is_available() and dist.is_initialized():
        dist.barrier(device_ids=[local_rank()] if cuda else None)  # rank 0 has written the result
        dist.destroy_process_group()
    return 0


def ddp_settings(wrapped: Any) -> dict[str, Any] | None:
    """How DDP wraps the model (None without DDP), with the bytes of the buffers it broadcasts before a forward."""
    import torch

    if not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return None
    buffers = getattr(wrapped, "modules_buffers", [])
    return {
        "find_unused_parameters": wrapped.find_unused_parameters,
        "broadcast_buffers": wrapped.broadcast_buffers,
        "buffers": len(buffers),
        "buffer_gb": round(sum(b.numel() * b.element_size() for b in buffers) / tt.GIB, 3),
        "bucket_cap_mb": round(wrapped.bucket_bytes_cap / 2**20, 1),
    }


def combine(ranks: list[dict[str, Any]], args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """One N's figures from every rank's `measure()` result: tokens summed over ranks, losses averaged."""
    n, w = len(ranks), args.warmup
    first = ranks[0]
    windows = [r["step_end_s"][-1] - r["step_end_s"][w - 1] for r in ranks]  # each rank's synced timed window
    timed_s = max(windows)
    timed_tokens = sum(r["timed_tokens"] for r in ranks)
    tokens_per_s = timed_tokens / timed_s
    times = first["step_end_s"]
    intervals = [b - a for a, b in zip(times[w - 1 : -1], times[w:], strict=True)]
    steps = len(first["per_step"])
    # With the Trainer's average_tokens_across_devices each rank's loss is its share scaled by the rank count, so the
    # step's loss (what the Trainer logs: the mean of the ranks' losses) is the mean over the ranks.
    losses = [statistics.fmean(r["per_step"][i]["loss"] for r in ranks) for i in range(steps)]
    per_step = [
        {key: sum(r["per_step"][i][key] for r in ranks) for key in ("tokens", "loss_tokens", "padded_tokens")}
        for i in range(steps)
    ]
    return {
        "gpus": n,
        "gpu": first["gpu"],
        "tokens_per_s": round(tokens_per_s, 1),
        "tokens_per_s_per_gpu": round(tokens_per_s / n, 1),
        "step_s": round(timed_s / (steps - w), 4),
        "step_s_median": round(statistics.median(intervals), 4),
        "peak_gb": first["peak_gb"],
        "peak_gb_per_rank": [r["peak_gb"] for r in ranks],
        "peak_reserved_gb": first["peak_reserved_gb"],
        "first_step_s": first["first_step_s"],
        "first_step_s_per_rank": [r["first_step_s"] for r in ranks],
        "setup_s": first["setup_s"],
        "started_at": first["started_at"],
        "mfu": round(tokens_per_s * first["flops_per_token"] / (n * args.peak_tflops * 1e12), 4) if cuda else None,
        "flops_per_token": first["flops_per_token"],
        "timed_steps": steps - w,
        "timed_tokens": timed_tokens,
        "timed_s_per_rank": [round(s, 4) for s in windows],
        "tokens_per_step": round(statistics.mean(s["tokens"] for s in per_step), 1),
        "padded_tokens_per_step": round(statistics.mean(s["padded_tokens"] for s in per_step), 1),
        "loss_tokens_per_step": round(statistics.mean(s["loss_tokens"] for s in per_step), 1),
        "micro_batch": first["micro_batch"],
        "gradient_accumulation_steps": first["gradient_accumulation_steps"],
        "effective_batch": first["micro_batch"] * first["gradient_accumulation_steps"] * n,
        "gradient_checkpointing": first["gradient_checkpointing"],
        "distributed_type": first["distributed_type"],
        "process_group": first["process_group"],
        "wrapped": first["wrapped"],
        "ddp": first["ddp"],
        "devices": [r["device"] for r in ranks],
        "train_rows": first["train_rows"],
        "losses": losses,
        "log_history": first["log_history"],
        "per_step": per_step,
        "step_end_s": times,
        "worker": first["worker"],
    }


# ---------------------------------------------------------------------------------------------------------------
# The driver


def run_ranks(
    n: int, ddp: str, args: argparse.Namespace, model_dir: Path, rows_file: Path, work: Path
) -> dict[str, Any]:
    """Train on `n` ranks through torchrun; rank 0's combined figures, or the error."""
    label = f"{n}" if ddp == "auto" else f"{n}-{ddp}"
    result = work / f"result-{label}.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={n}",
        str(Path(__file__).resolve()),
        "--rank-run",
        f"--shape={args.shape}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--batch={args.batch}",
        f"--gpus={n}",
        f"--peak-tflops={args.peak_tflops}",
        f"--ftq-performance={json.dumps(args.ftq_performance)}",
        *([f"--logging-steps={args.logging_steps}"] if args.logging_steps else []),
        f"--ddp={ddp}",
        f"--model-dir={model_dir}",
        f"--rows-file={rows_file}",
        f"--job-dir={work / f'job-{label}'}",
        f"--result={result}",
    ]
    print(f"== {n} rank(s), DDP {ddp}: {' '.join(command[2:6])} ...", flush=True)
    launched = time.time()
    # Its own process group (not a new session), so that a hung run can be stopped whole; the environment is this
    # process's, unchanged (NCCL settings such as NCCL_NVLS_ENABLE=0 pass through).
    proc = subprocess.Popen(command, process_group=0)
    try:
        code = proc.wait(timeout=args.rank_timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        return {"gpus": n, "variant": label, "error": f"stopped after {args.rank_timeout:.0f} s"}
    if code != 0 or not result.exists():
        return {"gpus": n, "variant": label, "error": f"torchrun exited with code {code}"}
    out: dict[str, Any] = {"gpus": n, "variant": label, **json.loads(result.read_text())}
    out["launch_to_first_step_s"] = round(out["started_at"] + out["first_step_s"] - launched, 2)
    out["wall_s"] = round(time.time() - launched, 1)
    return out


def stop_group(proc: "subprocess.Popen[bytes]") -> None:
    """SIGTERM to the run's process group, then SIGKILL after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def variants(n: int, ddp: list[str]) -> list[str]:
    """The --ddp variants to run on `n` ranks (one rank is not wrapped in DDP on a GPU: only `auto`)."""
    return ["auto"] if n == 1 else ddp


def compare(runs: list[dict[str, Any]]) -> None:
    """Add to each run its speedup and scaling efficiency over N=1 and its largest loss gap to N=1."""
    base = next((r for r in runs if r["gpus"] == 1 and "error" not in r), None)
    for r in runs:
        r.update(speedup=None, efficiency=None, max_loss_diff=None, same_tokens_steps=None)
        if base is None or "error" in r:
            continue
        r["speedup"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
        r["efficiency"] = round(r["tokens_per_s"] / (r["gpus"] * base["tokens_per_s"]), 3)
        pairs = list(zip(r["losses"], base["losses"], strict=False))
        r["max_loss_diff"] = max((abs(a - b) for a, b in pairs), default=None)
        # The same rows each step: every step's global non-pad and loss token counts equal N=1's (padding differs,
        # since each rank pads its own micro-batch).
        r["same_tokens_steps"] = sum(
            (a["tokens"], a["loss_tokens"]) == (b["tokens"], b["loss_tokens"])
            for a, b in zip(r["per_step"], base["per_step"], strict=False)
        )


def describe_ddp(ddp: dict[str, Any] | None) -> str:
    """DDP's two settings that the variants change, in a few words."""
    if ddp is None:
        return "-"
    on = {True: "on", False: "off"}
    return f"bcast {on[ddp['broadcast_buffers']]}, unused {on[ddp['find_unused_parameters']]}"


def table(runs: list[dict[str, Any]], cuda: bool) -> str:
    """The summary table, as Markdown."""

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    head = ["GPUs", "micro-batch", "DDP", "tokens/s", "s/step", "median s/step", "peak GB", "first-step s"]
    head += (["MFU/GPU"] if cuda else []) + ["speedup", "efficiency", "max loss diff", "same tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['variant']} | " + r["error"] + " |" * (len(head) - 1))
            continue
        cells = [str(r["gpus"]), f"{r['micro_batch']} x {r['gradient_accumulation_steps']}", describe_ddp(r["ddp"])]
        cells += [fmt(r["tokens_per_s"], ",.0f"), fmt(r["step_s"], ".3f"), fmt(r["step_s_median"], ".3f")]
        cells += [fmt(r["peak_gb"], ".2f"), fmt(r["first_step_s"], ".1f")]
        cells += [fmt(r["mfu"], ".1%")] if cuda else []
        cells += [fmt(r["speedup"], ".3f"), fmt(r["efficiency"], ".1%"), fmt(r["max_loss_diff"], ".2e")]
        cells.append("-" if r["same_tokens_steps"] is None else f"{r['same_tokens_steps']}/{len(r['per_step'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_model_here(args: argparse.Namespace) -> int:
    """Build the model (in a process of its own, so the driver never holds a GPU while the ranks train)."""
    import torch

    texts = tt.read_texts(tt.pick_rows_file(args.rows))
    tt.build_model(args.shape, args.model_dir, texts, "cuda" if torch.cuda.is_available() else "cpu")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with --rank-run, one rank of it)."""
    args = parse_args(argv)
    if args.rank_run:
        return rank_run(args)
    if args.build_model:
        return build_model_here(args)
    import torch  # the driver touches no GPU: its ranks and the model builder do

    cuda = torch.cuda.is_available()
    if args.shape != "tiny" and not cuda:
        sys.exit(f"--shape {args.shape} needs CUDA GPUs; --shape tiny runs on the CPU")
    if cuda and max(args.gpu_counts) > torch.cuda.device_count():
        sys.exit(f"--gpus {args.gpus} asks for more GPUs than the {torch.cuda.device_count()} visible")
    rows_file = tt.pick_rows_file(args.rows)
    texts = tt.read_texts(rows_file)
    model_dir = (args.model_dir or Path(tempfile.gettempdir()) / "ftq-bench" / f"model-{args.shape}").resolve()
    build = [sys.executable, str(Path(__file__).resolve()), "--build-model", f"--shape={args.shape}"]
    build += [f"--model-dir={model_dir}", f"--rows={rows_file}"]
    subprocess.run(build, check=True)

    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "gpu": None,
        "gpus_visible": torch.cuda.device_count() if cuda else 0,
        "shape": args.shape,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "max_length": tt.MAX_LENGTH,
        "rows_file": str(rows_file),
        "peak_tflops": args.peak_tflops if cuda else None,
        "ftq_performance": args.ftq_performance,
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("NCCL_", "TORCH_", "NVSHMEM_"))},
        "versions": tt.versions(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "runs": runs,
    }
    out: Path | None = args.out
    gpu = "cuda" if cuda else "cpu"
    with tempfile.TemporaryDirectory(prefix="ftq-bench-multi-") as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        from transformers import AutoTokenizer

        rows = tt.make_rows(texts, AutoTokenizer.from_pretrained(str(model_dir)), args.steps * args.batch)
        plan = [(n, v) for n in args.gpu_counts for v in variants(n, args.ddp_variants)]
        for i, (n, ddp) in enumerate(plan):
            # The same rows in one file per run, so that no run finds another's rows prepared in the `datasets` cache.
            rows_i = work / f"rows-{i}.jsonl"
            rows_i.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
            runs.append(run_ranks(n, ddp, args, model_dir, rows_i, work))
            hidden = ("step_end_s", "per_step", "worker", "losses", "log_history")
            print(json.dumps({k: v for k, v in runs[-1].items() if k not in hidden}), flush=True)
            # Written after every run, so that a run stopped later leaves the earlier ones' figures.
            compare(runs)
            result["gpu"] = gpu = next((r["gpu"] for r in runs if "gpu" in r), gpu)
            out = out or tt.default_out(args.out_dir, gpu, f"{args.shape}-multi-gpu")
            tt.write_result(out, result)

    print()
    head = f"{gpu}, {args.shape}, spec batch {args.batch}, {args.steps} steps ({args.warmup} warm-up)"
    print(f"{head}, {result['versions']}")
    print(table(runs, cuda))
    for r in runs:
        for event in (r.get("worker") or {}).get("events", []):
            print(f"{r['variant']} worker: {event['message']}")
    print(f"result: {out}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
