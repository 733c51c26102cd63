"""Where the time of one ftq training step goes: torch.profiler over the worker's fast training path.

Builds ftq's trainer exactly as `bench/train_throughput.py` does (`build_ftq`: `worker.training.build_trainer` on a
JobSpec, the random Llama of the shape, pricer rows of 170-182 tokens, batch 16, `logging_steps=1`), Liger off and
then, if `liger_kernel` imports and CUDA is there, Liger on. Each build trains one run of `trainer.train()` whose
steps are split into phases by a callback. The default plan profiles (Liger off: A, B, C; Liger on: A, C):

    warm-up -> A: timed, profiled -> B: timed, profiled -> C: timed, profiled -> A again: timed

`--rounds N` times instead: N rounds, each timing every variant in turn (one warm-up step after each switch), then
profiles the `--profile-variants`. The host's speed drifts over a run, so variants are compared within a round.

- A: the trainer as ftq runs it.
- B: A without the per-micro-batch metric syncs: TRL 1.16's `SFTTrainer.compute_loss` (entropy and token accuracy
  `.item()`, `num_valid > 0` tests, the attention-mask token count `.item()`) and ftq's
  `CompletionTokenTrainer.training_step` (two `int()`); the loss is computed as TRL computes it, ftq's token counts
  are kept on the device instead.
- C: B, and also without the other host syncs of a step that are not arithmetic: bitsandbytes' optimizers
  synchronize the device after every parameter's update (`sync_gpu`), the Trainer checks the loss for NaN/inf
  (`logging_nan_inf_filter`, two syncs a micro-batch) and logs every step (`logging_steps=1`: loss and grad norm
  `.item()`). C switches those off for its steps (sync_gpu patched to a no-op, the filter off, logging every 1e9
  steps).
- D: C with `torch.optim.AdamW(fused=True)` on the same param groups in place of bnb's per-parameter loop (a timing
  proxy: its state is in the weights' dtype, bnb's in fp32).
- E: D with the LoRA dropouts replaced by identity (an upper bound of what fusing them could save; changes the
  arithmetic).
- F: A with `gc.freeze()`.
Measurement only: none of the variants is what ftq should ship as is.

Every step ends with a device sync (as train_throughput's clock does). A timed step records its wall time (sync to
sync), the time the host took to issue it (up to just before the closing sync), the device's tail after that (near
zero: the device was waiting for the host), the process CPU time and the garbage collector's pauses. A profiled
phase runs torch.profiler (CPU and CUDA activities, one profiler warm-up step, then the recorded steps). From the
trace (kineto's Chrome JSON) the script computes per step: wall time, the sum of kernel durations and the union of
GPU activity intervals (busy time), kernel launches, host syncs (cudaStreamSynchronize / cudaDeviceSynchronize /
cudaEventSynchronize calls, and DtoH copies) and the phase they fall in, GPU idle gaps by size, the delay from launch
to kernel start, GPU and host time by phase of the step (data, forward, backward, grad clip, optimizer, logging,
other) and GPU time by kernel bucket, the top kernels and the top CPU ops by self CPU time. The phases are
record_function ranges around the trainer's methods (get_batch_samples, compute_loss, accelerator.backward,
_clip_grad_norm, optimizer.step, _maybe_log_save_evaluate); "other" is the rest of the loop.

    python3 bench/profile_step.py --shape tiny        # CPU smoke check (~1.5 min on 2 cores), results in $TMPDIR
    python3 bench/profile_step.py --shape 8b --out-dir $OUT --stem 2026-11-29-nvidia-h200-8b-profile
    python3 bench/profile_step.py --shape 8b --out-dir $OUT --stem 2026-11-29-nvidia-h200-8b-profile-rounds \
        --rounds 3 --time-steps 5 --variants ABCDEF --liger-variants ABCDEF --profile-variants D
    python3 bench/profile_step.py --summarize bench/results/2026-11-29-nvidia-h200-8b-profile-rounds.json

Writes <out-dir>/<stem>.json and <stem>.txt (stem default: <date>-<gpu>-<shape>-profile), rewritten after each
variant so a run cut short still leaves what it measured.
"""

import argparse
import bisect
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.train_throughput import (  # noqa: E402  (after the path fix)
    GIB,
    build_ftq,
    build_model,
    make_rows,
    matmul_params,
    pick_rows_file,
    read_texts,
    versions,
)

VARIANTS = {
    "A": "ftq as it runs (TRL metric syncs, int() token counts, paged AdamW sync per parameter, log every step)",
    "B": "A without the metric syncs in compute_loss and training_step",
    "C": "B without bnb's per-parameter sync_gpu, the NaN/inf loss check and per-step logging",
    "D": "C with torch.optim.AdamW(fused=True) stepping the LoRA weights instead of bnb's per-parameter loop "
    "(timing proxy: its state is in the weights' dtype, bnb's in fp32)",
    "E": "D with the LoRA dropout modules replaced by identity (upper bound of what fusing the dropout can save; "
    "changes the arithmetic)",
    "F": "A with gc.freeze() (the objects of the set-up moved out of the collector's generations)",
}
SYNC_CALLS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cuStreamSynchronize",
    "cuCtxSynchronize",
    "cuEventSynchronize",
)
MEMCPY_CALLS = ("cudaMemcpyAsync", "cudaMemcpy", "cuMemcpyDtoHAsync_v2", "cuMemcpyDtoH_v2", "cuMemcpyAsync")
PHASES = ("data", "forward", "backward", "clip_grad", "optimizer", "log", "other")
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_CATS = ("cuda_runtime", "cuda_driver")

# Kernel name -> bucket, first match wins (attention before GEMM: mem-efficient attention kernels say "cutlass").
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    ("attention", re.compile(r"flash|fmha|attention|sdpa|mem_eff", re.I)),
    ("gemm", re.compile(r"nvjet|gemm|cutlass|xmma|cublas|sm90_|splitk|gemv|matmul", re.I)),
    ("optimizer", re.compile(r"koptimizer|optimizer|adam", re.I)),
    ("foreach (grad clip, zero)", re.compile(r"multi_tensor|foreach", re.I)),
    ("dequantize", re.compile(r"dequant|kquantize", re.I)),
    ("dropout", re.compile(r"dropout|bernoulli", re.I)),
]
GENERIC: list[tuple[str, re.Pattern[str]]] = [
    ("reduction/norm/softmax", re.compile(r"reduce|softmax|norm|argmax|cross_entropy|nll|logsumexp|cumsum|scan", re.I)),
    ("copy/cast/index", re.compile(r"copy|catarray|cat_|index|gather|scatter|fill|arange|where", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|pointwise|launch_kernel", re.I)),
]
TRITON = "triton (Liger / fused)"


def bucket_of(name: str, cat: str) -> str:
    """The bucket of one GPU activity."""
    if cat == "gpu_memcpy":
        return "memcpy"
    if cat == "gpu_memset":
        return "memset"
    for label, pattern in BUCKETS:
        if pattern.search(name):
            return label
    if not name.startswith("void ") and "::" not in name and "<" not in name:
        return TRITON  # Triton kernels carry their Python function's name, C++ ones a template signature
    for label, pattern in GENERIC:
        if pattern.search(name):
            return label
    return "other"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=["tiny", "1b", "8b"], default="tiny", help="model shape (8b and 1b need CUDA)")
    p.add_argument("--batch", type=int, default=16, help="rows per step (the course's 16)")
    p.add_argument("--warmup", type=int, help="steps before the first measured phase (default 8; tiny: 2)")
    p.add_argument("--time-steps", type=int, help="steps of each timed phase (default 6; tiny: 2)")
    p.add_argument("--profile-steps", type=int, help="recorded steps of the first variant's profile (5; tiny: 2)")
    p.add_argument("--profile-steps-other", type=int, help="recorded steps of the other variants' (3; tiny: 1)")
    p.add_argument("--variant-warmup", type=int, help="steps after switching variant, before timing (2; tiny: 1)")
    p.add_argument("--liger", choices=["off", "on", "both"], default="both", help="builds to run (on: if importable)")
    p.add_argument("--compile", action="store_true", help="build with performance.compile: true (each decoder layer)")
    p.add_argument("--variants", default="ABC", help="variants of the Liger-off build, in order (letters of ABC)")
    p.add_argument("--liger-variants", default="AC", help="variants of the Liger-on build")
    p.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="timing only: this many rounds, each timing every variant in turn (--time-steps steps after one "
        "warm-up step), then one profile of each --profile-variants; 0: the profile plan above",
    )
    p.add_argument("--profile-variants", default="", help="with --rounds: variants profiled after the rounds")
    p.add_argument("--model-dir", type=Path, help="where the random model is built once and reused")
    p.add_argument("--rows", type=Path, help="pricer .jsonl with a 'text' column")
    p.add_argument(
        "--out-dir", type=Path, help="folder of the result files (default bench/results; tiny: $TMPDIR/ftq-profile)"
    )
    p.add_argument("--stem", help="result file name without extension (default <date>-<gpu>-<shape>-profile)")
    p.add_argument("--top", type=int, default=20, help="rows of the top-kernel and top-CPU-op tables")
    p.add_argument("--keep-trace", action="store_true", help="keep each profile's Chrome trace beside the results")
    p.add_argument("--summarize", type=Path, help="print (and rewrite beside it) the summary of a result JSON; no run")
    args = p.parse_args(argv)
    tiny = args.shape == "tiny"
    if args.out_dir is None:  # a CPU smoke run's figures mean nothing: keep them out of bench/results
        args.out_dir = Path(tempfile.gettempdir()) / "ftq-profile" if tiny else REPO / "bench" / "results"
    for name, big, small in (
        ("warmup", 8, 2),
        ("time_steps", 6, 2),
        ("profile_steps", 5, 2),
        ("profile_steps_other", 3, 1),
        ("variant_warmup", 2, 1),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else big)
    for name in ("variants", "liger_variants", "profile_variants"):
        letters = getattr(args, name)
        if (not letters and name != "profile_variants") or set(letters) - set(VARIANTS):
            p.error(f"--{name.replace('_', '-')} takes letters of {''.join(VARIANTS)}")
    return args


# ---------------------------------------------------------------------------------------------------------------
# Variants and phase markers, installed on a built trainer


class Switches:
    """What the current variant turns off; read by the wrappers below at every call."""

    def __init__(self) -> None:
        self.set("A")

    def set(self, variant: str) -> None:
        self.variant = variant
        self.no_metric_syncs = variant in "BCDE"
        self.no_other_syncs = variant in "CDE"
        self.torch_adamw = variant in "DE"
        self.no_lora_dropout = variant == "E"
        self.gc_freeze = variant == "F"


def lean_compute_loss(trainer: Any, model: Any, inputs: dict[str, Any], num_items_in_batch: Any) -> Any:
    """TRL 1.16's SFTTrainer.compute_loss for ftq's case (no compute_loss_func, no label smoothing, nll loss, no
    MoE aux loss, no sequence parallelism): the same loss, without the entropy/accuracy/token-count metrics."""
    import torch

    inputs["use_cache"] = False
    outputs = model(**inputs, fused_lm_head=True)
    per_token_loss = -outputs.log_probs
    num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
    loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())
    return loss


def install(trainer: Any, sw: Switches) -> dict[str, Any]:
    """Wrap the trainer's step methods: record_function phase ranges, and the B/C variants behind `sw`."""
    import bitsandbytes.optim.optimizer as bnb_optimizer
    from torch.profiler import record_function
    from trl import SFTTrainer

    lean_ok = (
        trainer.compute_loss_func is None
        and trainer.label_smoother is None
        and trainer.args.loss_type == "nll"
        and not trainer.aux_loss_enabled
    )
    if not lean_ok:
        raise RuntimeError("the trainer is not in the case lean_compute_loss reproduces")
    device_counts: dict[str, Any] = {"completion_tokens": 0, "input_tokens": 0}

    def wrap(fn: Any, phase: str) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            with record_function(f"phase:{phase}"):
                return fn(*a, **k)

        return wrapped

    orig_compute_loss = trainer.compute_loss

    def compute_loss(model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        with record_function("phase:forward"):
            if sw.no_metric_syncs and not return_outputs:
                return lean_compute_loss(trainer, model, inputs, num_items_in_batch)
            return orig_compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    orig_training_step = trainer.training_step

    def training_step(model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        if sw.no_metric_syncs:  # ftq's two counts, kept on the device (no int() per micro-batch)
            device_counts["completion_tokens"] = device_counts["completion_tokens"] + (inputs["labels"] != -100).sum()
            mask = inputs.get("attention_mask")
            device_counts["input_tokens"] = device_counts["input_tokens"] + (
                mask.sum() if mask is not None else inputs["input_ids"].numel()
            )
            return SFTTrainer.training_step(trainer, model, inputs, num_items_in_batch)
        return orig_training_step(model, inputs, num_items_in_batch)

    trainer.compute_loss = compute_loss  # instance attributes: Trainer calls self.compute_loss(...) etc.
    trainer.training_step = training_step
    trainer._clip_grad_norm = wrap(trainer._clip_grad_norm, "clip_grad")
    trainer._maybe_log_save_evaluate = wrap(trainer._maybe_log_save_evaluate, "log")
    trainer.get_batch_samples = wrap(trainer.get_batch_samples, "data")
    trainer.accelerator.backward = wrap(trainer.accelerator.backward, "backward")

    orig_sync_gpu = bnb_optimizer.sync_gpu

    def sync_gpu(t: Any) -> None:
        if not sw.no_other_syncs:
            orig_sync_gpu(t)

    bnb_optimizer.sync_gpu = sync_gpu
    return {
        "wrap": wrap,
        "device_counts": device_counts,
        "restore_sync_gpu": lambda: setattr(bnb_optimizer, "sync_gpu", orig_sync_gpu),
    }


# ---------------------------------------------------------------------------------------------------------------
# The phase plan and the callback that runs it


def make_plan(args: argparse.Namespace, variants: str) -> list[dict[str, Any]]:
    """Phases of one build's training run, in order."""
    plan: list[dict[str, Any]] = [{"kind": "warm", "variant": variants[0], "steps": args.warmup}]
    if args.rounds:
        for _ in range(args.rounds):
            for v in variants:
                plan.append({"kind": "warm", "variant": v, "steps": 1})
                plan.append({"kind": "time", "variant": v, "steps": args.time_steps})
        for v in args.profile_variants:
            plan.append({"kind": "warm", "variant": v, "steps": 1})
            plan.append({"kind": "profile", "variant": v, "steps": args.profile_steps_other + 1})
        return plan
    for i, v in enumerate(variants):
        if i:
            plan.append({"kind": "warm", "variant": v, "steps": args.variant_warmup})
        plan.append({"kind": "time", "variant": v, "steps": args.time_steps})
        recorded = args.profile_steps if i == 0 else args.profile_steps_other
        plan.append({"kind": "profile", "variant": v, "steps": recorded + 1})  # + the profiler's warm-up step
    if len(variants) > 1:  # the first variant again: does the speed drift over the run?
        plan.append({"kind": "warm", "variant": variants[0], "steps": max(1, args.variant_warmup)})
        plan.append({"kind": "time", "variant": variants[0] + "2", "steps": args.time_steps})
    return plan


def make_controller(
    trainer: Any, plan: list[dict[str, Any]], sw: Switches, hooks: dict[str, Any], cuda: bool, on_profile: Any
) -> Any:
    """A TrainerCallback that applies each phase's variant, times the timed phases and profiles the others."""
    import torch
    from transformers import TrainerCallback

    class Controller(TrainerCallback):
        def __init__(self) -> None:
            self.phase = 0
            self.in_phase = 0  # steps of the current phase done
            self.timed: dict[str, dict[str, Any]] = {}
            self.prof: Any = None
            self.optimizer_wrapped = False
            self.saved: dict[str, Any] = {}
            self.last_end = 0.0  # wall clock after the device sync at the last step end
            self.last_cpu = 0.0
            self.gc_ms = 0.0
            self.gc_runs: Counter[int] = Counter()
            self._gc_t0 = 0.0
            self.bnb_optimizer: Any = None
            self.torch_optimizer: Any = None
            self.dropouts: list[tuple[Any, str, Any]] = []
            gc.callbacks.append(self.on_gc)

        def on_gc(self, phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                self._gc_t0 = time.perf_counter()
            else:
                self.gc_ms += (time.perf_counter() - self._gc_t0) * 1e3
                self.gc_runs[info.get("generation", -1)] += 1

        def sync(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def apply(self, variant: str) -> None:
            sw.set(variant[0])
            if not self.saved:
                self.saved = {
                    "logging_steps": trainer.state.logging_steps,
                    "nan_inf": trainer.args.logging_nan_inf_filter,
                }
            quiet = sw.no_other_syncs
            trainer.state.logging_steps = 10**9 if quiet else self.saved["logging_steps"]
            trainer.args.logging_nan_inf_filter = False if quiet else self.saved["nan_inf"]
            wrapper = trainer.optimizer  # accelerate's AcceleratedOptimizer: step() calls wrapper.optimizer.step()
            if self.bnb_optimizer is None:
                self.bnb_optimizer = wrapper.optimizer
            if sw.torch_adamw and self.torch_optimizer is None:
                # the same param groups (the LR scheduler steps them through the wrapper's param_groups)
                groups = [
                    {k: g[k] for k in ("params", "lr", "betas", "eps", "weight_decay") if k in g}
                    for g in self.bnb_optimizer.param_groups
                ]
                self.torch_optimizer = torch.optim.AdamW(groups, fused=cuda)
            wrapper.optimizer = self.torch_optimizer if sw.torch_adamw else self.bnb_optimizer
            if not self.dropouts:
                for module in trainer.model.modules():
                    drop = getattr(module, "lora_dropout", None)
                    if isinstance(drop, torch.nn.ModuleDict):
                        self.dropouts += [(drop, key, drop[key]) for key in drop]
            for holder, key, original in self.dropouts:
                holder[key] = torch.nn.Identity() if sw.no_lora_dropout else original
            if sw.gc_freeze:
                gc.freeze()
            else:
                gc.unfreeze()

        def on_step_begin(self, targs: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not self.optimizer_wrapped:
                trainer.optimizer.step = hooks["wrap"](trainer.optimizer.step, "optimizer")
                self.optimizer_wrapped = True
            if self.phase >= len(plan):
                return
            ph = plan[self.phase]
            if self.in_phase == 0:
                self.apply(ph["variant"])
                if ph["kind"] == "profile":
                    self.start_profiler(ph)

        def start_profiler(self, ph: dict[str, Any]) -> None:
            from torch.profiler import ProfilerActivity, profile, schedule

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            variant = ph["variant"]

            def ready(p: Any) -> None:
                on_profile(p, variant, ph["steps"] - 1)

            self.prof = profile(
                activities=activities,
                schedule=schedule(wait=0, warmup=1, active=ph["steps"] - 1, repeat=1),
                on_trace_ready=ready,
                record_shapes=False,
                with_stack=False,
            )
            self.prof.start()

        def on_step_end(self, targs: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Every step ends with a device sync (as train_throughput's clock does). A timed step records its wall
            time (sync to sync), how long the host took to issue it (to just before the closing sync), the tail the
            device still ran after that, the process CPU time and the garbage collector's pauses."""
            if self.phase >= len(plan):
                return
            ph = plan[self.phase]
            self.in_phase += 1
            last = self.in_phase == ph["steps"]
            t_issued = time.perf_counter()
            t = self.sync()
            cpu = time.process_time()
            if ph["kind"] == "time":
                v = ph["variant"]
                rec = self.timed.setdefault(
                    v,
                    {
                        "wall_s": [],
                        "issue_s": [],
                        "tail_s": [],
                        "cpu_s": [],
                        "gc_ms": [],
                        "gc_runs": Counter(),
                        "steps_at": [],
                    },
                )
                rec["wall_s"].append(t - self.last_end)
                rec["issue_s"].append(t_issued - self.last_end)
                rec["tail_s"].append(t - t_issued)
                rec["cpu_s"].append(cpu - self.last_cpu)
                rec["gc_ms"].append(self.gc_ms)
                rec["gc_runs"].update(self.gc_runs)
                rec["steps_at"].append(state.global_step)
                rec["step_s"] = statistics.mean(rec["wall_s"])
                rec["step_s_median"] = statistics.median(rec["wall_s"])
                if last:
                    print(
                        json.dumps(
                            {
                                "timed": v,
                                "liger": bool(targs.use_liger_kernel),
                                "step_s": round(statistics.mean(rec["wall_s"][-ph["steps"] :]), 4),
                                "issue_s": round(statistics.mean(rec["issue_s"][-ph["steps"] :]), 4),
                                "gc_ms": round(sum(rec["gc_ms"][-ph["steps"] :]), 1),
                            }
                        ),
                        flush=True,
                    )
            if self.prof is not None:
                self.prof.step()
                if last:
                    self.prof.stop()
                    self.prof = None
            if last:
                self.phase += 1
                self.in_phase = 0
                t = self.sync()  # after any trace processing: the next phase starts clean
                cpu = time.process_time()
            self.last_end, self.last_cpu = t, cpu
            self.gc_ms = 0.0
            self.gc_runs = Counter()

        def on_train_end(self, targs: Any, state: Any, control: Any, **kwargs: Any) -> None:
            gc.callbacks.remove(self.on_gc)
            gc.unfreeze()
            if self.bnb_optimizer is not None:
                trainer.optimizer.optimizer = self.bnb_optimizer
            for holder, key, original in self.dropouts:
                holder[key] = original

    return Controller()


# ---------------------------------------------------------------------------------------------------------------
# Trace analysis


def merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of [start, end) intervals, sorted."""
    out: list[tuple[float, float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def self_times(events: list[dict[str, Any]]) -> dict[int, float]:
    """Self time (µs) of each host event (CPU ops and CUDA runtime/driver calls), by index into `events`: its
    duration less that of the events directly nested in it on the same thread (as torch's key_averages counts)."""
    by_tid: dict[Any, list[int]] = defaultdict(list)
    for i, ev in enumerate(events):
        by_tid[(ev.get("pid"), ev.get("tid"))].append(i)
    child_sum: dict[int, float] = defaultdict(float)
    for idx in by_tid.values():
        idx.sort(key=lambda i: (events[i]["ts"], -events[i]["dur"]))
        stack: list[int] = []
        for i in idx:
            ts = events[i]["ts"]
            while stack and events[stack[-1]]["ts"] + events[stack[-1]]["dur"] <= ts:
                stack.pop()
            if stack:
                child_sum[stack[-1]] += events[i]["dur"]
            stack.append(i)
    return {i: ev["dur"] - child_sum.get(i, 0.0) for i, ev in enumerate(events)}


def short(name: str, n: int = 110) -> str:
    """A kernel name cut to `n` characters."""
    name = re.sub(r"\s+", " ", name)
    return name if len(name) <= n else name[: n - 3] + "..."


def analyze_trace(path: Path, steps_expected: int, top: int) -> dict[str, Any]:
    """Per-step and aggregate figures from one Chrome trace written by torch.profiler."""
    data = json.loads(path.read_text())
    events = [e for e in data.get("traceEvents", []) if e.get("ph") == "X" and "ts" in e and "dur" in e]
    for e in events:
        e["ts"] = float(e["ts"])
        e["dur"] = float(e["dur"])
    steps = sorted(
        (e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#")),
        key=lambda e: e["ts"],
    )
    phases = sorted(
        (e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("phase:")),
        key=lambda e: e["ts"],
    )
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS), key=lambda e: e["ts"])
    host_calls = [e for e in events if e.get("cat") in HOST_CATS]
    cpu_ops = [e for e in events if e.get("cat") == "cpu_op"]
    host_by_corr = {e["args"]["correlation"]: e for e in host_calls if "correlation" in e.get("args", {})}
    launch_ts = {c: e["ts"] for c, e in host_by_corr.items()}
    phase_starts = [p["ts"] for p in phases]

    def phase_at(ts: float) -> str:
        """The phase range holding a host timestamp (the ranges follow one another, none nests in another)."""
        i = bisect.bisect_right(phase_starts, ts) - 1
        if i >= 0 and ts <= phases[i]["ts"] + phases[i]["dur"]:
            return phases[i]["name"].split(":", 1)[1]
        return "other"

    hosts = cpu_ops + host_calls
    selfs = self_times(hosts)

    per_step: list[dict[str, Any]] = []
    kern_total: Counter[str] = Counter()
    kern_count: Counter[str] = Counter()
    bucket_total: Counter[str] = Counter()
    bucket_count: Counter[str] = Counter()
    phase_gpu: Counter[str] = Counter()
    phase_launch: Counter[str] = Counter()
    phase_cpu: Counter[str] = Counter()
    cpu_self: Counter[str] = Counter()
    cpu_calls: Counter[str] = Counter()
    queue_delays: list[float] = []
    gpu_starts = [e["ts"] for e in gpu]
    for st in steps:
        s0, s1 = st["ts"], st["ts"] + st["dur"]
        lo, hi = bisect.bisect_left(gpu_starts, s0), bisect.bisect_left(gpu_starts, s1)
        acts = gpu[lo:hi]
        kernels = [e for e in acts if e["cat"] == "kernel"]
        union = merge([(max(e["ts"], s0), min(e["ts"] + e["dur"], s1)) for e in acts])
        busy = sum(b - a for a, b in union)
        gaps = [union[0][0] - s0] if union else [s1 - s0]
        gaps += [b[0] - a[1] for a, b in zip(union, union[1:], strict=False)]
        gaps += [s1 - union[-1][1]] if union else []
        calls = Counter(e["name"] for e in host_calls if s0 <= e["ts"] < s1)
        sync_time = sum(e["dur"] for e in host_calls if s0 <= e["ts"] < s1 and e["name"] in SYNC_CALLS)
        memcpys: Counter[str] = Counter()
        for e in acts:
            if e["cat"] == "gpu_memcpy":
                n = e["name"]
                kind = "DtoH" if "DtoH" in n or "Device -> P" in n else "HtoD" if "HtoD" in n else "other"
                memcpys[kind] += 1
                if kind == "DtoH":  # the host waits in the copy call itself (.item(), int(), bool())
                    corr = e.get("args", {}).get("correlation")
                    call = host_by_corr.get(corr)
                    if call is not None and call["name"] not in SYNC_CALLS:
                        sync_time += call["dur"]
        for e in acts:
            b = bucket_of(e["name"], e["cat"])
            bucket_total[b] += e["dur"]
            bucket_count[b] += 1
            if e["cat"] == "kernel":
                kern_total[e["name"]] += e["dur"]
                kern_count[e["name"]] += 1
            corr = e.get("args", {}).get("correlation")
            t_launch = launch_ts.get(corr)
            ph = phase_at(t_launch) if t_launch is not None else "other"
            phase_gpu[ph] += e["dur"]
            phase_launch[ph] += 1
            if t_launch is not None and e["cat"] == "kernel":
                queue_delays.append(e["ts"] - t_launch)
        in_phases = 0.0
        for p in phases:
            if s0 <= p["ts"] < s1:
                phase_cpu[p["name"].split(":", 1)[1]] += p["dur"]
                in_phases += p["dur"]
        phase_cpu["other"] += (s1 - s0) - in_phases  # loop body, callbacks, lr scheduler, zero_grad, NaN check
        n_ops = 0
        host_self = 0.0
        for i, e in enumerate(hosts):
            if s0 <= e["ts"] < s1:
                cpu_self[e["name"]] += selfs[i]
                cpu_calls[e["name"]] += 1
                n_ops += e.get("cat") == "cpu_op"
                host_self += selfs[i]
        syncs = {name: calls[name] for name in SYNC_CALLS if calls[name]}
        sync_phases: Counter[str] = Counter()
        for e in host_calls:
            if s0 <= e["ts"] < s1 and e["name"] in SYNC_CALLS:
                sync_phases[phase_at(e["ts"])] += 1
        for e in acts:
            if e["cat"] == "gpu_memcpy" and ("DtoH" in e["name"] or "Device -> P" in e["name"]):
                t_call = launch_ts.get(e.get("args", {}).get("correlation"))
                sync_phases[phase_at(t_call) if t_call is not None else "other"] += 1
        per_step.append(
            {
                "wall_ms": (s1 - s0) / 1e3,
                "kernel_sum_ms": sum(e["dur"] for e in kernels) / 1e3,
                "gpu_busy_ms": busy / 1e3,
                "gpu_idle_ms": (s1 - s0 - busy) / 1e3,
                "kernels": len(kernels),
                "memcpy": dict(memcpys),
                "memsets": sum(e["cat"] == "gpu_memset" for e in acts),
                "launch_calls": sum(n for name, n in calls.items() if "LaunchKernel" in name or "cuLaunch" in name),
                "sync_calls": syncs,
                "sync_calls_total": sum(syncs.values()),
                "sync_wait_ms": sync_time / 1e3,
                "dtoh_copies": memcpys["DtoH"],
                "host_syncs_total": sum(syncs.values()) + memcpys["DtoH"],
                "host_syncs_by_phase": dict(sync_phases),
                "cpu_ops": n_ops,
                "host_self_ms": host_self / 1e3,  # CPU ops and CUDA API calls, all threads; the rest is Python
                "idle_gaps": {
                    "under_10us": {"n": sum(g < 10 for g in gaps), "ms": sum(g for g in gaps if g < 10) / 1e3},
                    "10us_to_100us": {
                        "n": sum(10 <= g < 100 for g in gaps),
                        "ms": sum(g for g in gaps if 10 <= g < 100) / 1e3,
                    },
                    "100us_to_1ms": {
                        "n": sum(100 <= g < 1000 for g in gaps),
                        "ms": sum(g for g in gaps if 100 <= g < 1000) / 1e3,
                    },
                    "over_1ms": {"n": sum(g >= 1000 for g in gaps), "ms": sum(g for g in gaps if g >= 1000) / 1e3},
                },
            }
        )
    n = max(len(per_step), 1)
    kernel_sum = sum(kern_total.values()) or 1.0
    gpu_sum = sum(bucket_total.values()) or 1.0
    top_kernels = [
        {
            "name": short(name),
            "ms_per_step": t / n / 1e3,
            "calls_per_step": kern_count[name] / n,
            "share": t / kernel_sum,
            "bucket": bucket_of(name, "kernel"),
        }
        for name, t in kern_total.most_common(top)
    ]
    top_cpu = [
        {"name": short(name, 70), "self_ms_per_step": t / n / 1e3, "calls_per_step": cpu_calls[name] / n}
        for name, t in cpu_self.most_common(top)
    ]
    buckets = {
        b: {"ms_per_step": t / n / 1e3, "share": t / gpu_sum, "count_per_step": bucket_count[b] / n}
        for b, t in bucket_total.most_common()
    }
    phase_table = {
        ph: {
            "cpu_ms_per_step": phase_cpu.get(ph, 0.0) / n / 1e3,
            "gpu_ms_per_step": phase_gpu.get(ph, 0.0) / n / 1e3,
            "gpu_activities_per_step": phase_launch.get(ph, 0) / n,
        }
        for ph in PHASES
    }
    queue_delays.sort()

    def pct(q: float) -> float | None:
        return queue_delays[min(int(q * len(queue_delays)), len(queue_delays) - 1)] if queue_delays else None

    def mean(key: str) -> float:
        return statistics.mean(s[key] for s in per_step) if per_step else 0.0

    return {
        "steps_recorded": len(per_step),
        "steps_expected": steps_expected,
        "per_step": per_step,
        "mean": {
            k: mean(k)
            for k in (
                "wall_ms",
                "kernel_sum_ms",
                "gpu_busy_ms",
                "gpu_idle_ms",
                "kernels",
                "launch_calls",
                "sync_calls_total",
                "dtoh_copies",
                "host_syncs_total",
                "sync_wait_ms",
                "cpu_ops",
                "host_self_ms",
                "memsets",
            )
        },
        "launch_to_start_us": {
            "p10": pct(0.1),
            "median": pct(0.5),
            "p90": pct(0.9),
            "share_under_20us": (sum(d < 20 for d in queue_delays) / len(queue_delays)) if queue_delays else None,
        },
        "buckets": buckets,
        "phases": phase_table,
        "top_kernels": top_kernels,
        "top_cpu_self": top_cpu,
        "trace_events": len(events),
    }


# ---------------------------------------------------------------------------------------------------------------
# One build


def run_build(
    liger: bool,
    args: argparse.Namespace,
    model_dir: Path,
    rows_path: Path,
    work: Path,
    cuda: bool,
    builds: list[dict[str, Any]],
    report: Any,
) -> None:
    """Build ftq's trainer (Liger on or off), run the phase plan, and append its figures to `builds` (at once, so
    that `report` writes what is measured so far)."""
    import torch

    plan = make_plan(args, args.liger_variants if liger else args.variants)
    total_steps = sum(ph["steps"] for ph in plan)
    ns = argparse.Namespace(
        steps=total_steps, batch=args.batch, accumulation=1, ftq_performance={"liger": liger, "compile": args.compile}
    )
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer, reporter = build_ftq(model_dir, rows_path, ns, work / f"job-liger-{'on' if liger else 'off'}")
    build_s = time.perf_counter() - t0
    sw = Switches()
    hooks = install(trainer, sw)
    result: dict[str, Any] = {
        "liger_asked": liger,
        "compile": args.compile,
        "use_liger_kernel": bool(trainer.args.use_liger_kernel),
        "gradient_checkpointing": bool(trainer.args.activation_checkpointing),
        "optim": str(trainer.args.optim),
        "logging_steps": trainer.args.logging_steps,
        "plan": plan,
        "build_s": round(build_s, 1),
        "worker_events": [e["message"] for e in reporter.events],
        "profiles": {},
        "timed": {},
    }
    builds.append(result)
    tmp = Path(tempfile.mkdtemp(prefix="ftq-prof-"))

    def on_profile(p: Any, variant: str, steps: int) -> None:
        t = time.perf_counter()
        trace = tmp / f"trace-{variant}.json"
        p.export_chrome_trace(str(trace))
        export_s = time.perf_counter() - t
        figures = analyze_trace(trace, steps, args.top)
        figures["export_s"] = round(export_s, 1)
        figures["analyze_s"] = round(time.perf_counter() - t - export_s, 1)
        figures["trace_mb"] = round(trace.stat().st_size / 2**20, 1)
        if args.keep_trace:
            import gzip

            dest = args.out_dir / f"{args.stem}-trace-liger-{'on' if liger else 'off'}-{variant}.json.gz"
            dest.write_bytes(gzip.compress(trace.read_bytes()))
        trace.unlink()
        result["profiles"][variant] = figures
        m = figures["mean"]
        print(
            json.dumps(
                {
                    "profiled": variant,
                    "liger": liger,
                    "wall_ms": round(m["wall_ms"], 1),
                    "gpu_busy_ms": round(m["gpu_busy_ms"], 1),
                    "kernels": m["kernels"],
                    "host_syncs": m["host_syncs_total"],
                    "export_s": figures["export_s"],
                    "analyze_s": figures["analyze_s"],
                    "trace_mb": figures["trace_mb"],
                }
            ),
            flush=True,
        )
        report()

    controller = make_controller(trainer, plan, sw, hooks, cuda, on_profile)
    trainer.add_callback(controller)
    result["timed"] = controller.timed  # filled in as the run goes
    try:
        trainer.train()
    finally:
        hooks["restore_sync_gpu"]()
    result["steps_run"] = trainer.state.global_step
    result["peak_gb"] = round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None
    result["final_loss"] = next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None)
    del trainer, controller
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------
# Report


def round_medians(build: dict[str, Any]) -> dict[str, list[float]]:
    """Median wall ms of each timed phase, by variant, in plan order (one per round with --rounds)."""
    out: dict[str, list[float]] = {}
    for v, t in build["timed"].items():
        if "wall_s" not in t:
            continue
        sizes = [ph["steps"] for ph in build["plan"] if ph["kind"] == "time" and ph["variant"] == v]
        walls, at = t["wall_s"], 0
        for n in sizes:
            if at + n <= len(walls):
                out.setdefault(v, []).append(statistics.median(walls[at : at + n]) * 1e3)
            at += n
    return out


def summary_text(result: dict[str, Any]) -> str:
    """The printed summary."""
    lines = [
        f"# ftq training step profile: {result['gpu']}, shape {result['shape']}, batch {result['batch']}, "
        f"{result['date']}",
        f"versions: {result['versions']}",
        f"command: {result['command']}",
        f"tokens per step (non-pad, mean of the rows): ~{result['tokens_per_step']:.0f}; decoder matmul weights "
        f"{result['flop_params']:.3g}; matmul floor at {result['peak_tflops']:.0f} TFLOP/s: "
        f"{result['matmul_floor_ms']:.1f} ms/step",
        "",
        "variants: " + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()),
        "timed steps: wall = device sync to device sync; host issue = from the last step's closing sync to just "
        "before this one's; device tail = the wait in that closing sync (near 0: the device waited for the host)",
        "",
    ]
    for b in result["builds"]:
        tag = f"liger {'on' if b['use_liger_kernel'] else 'off'}" + (", compiled" if b.get("compile") else "")
        lines.append(
            f"## {tag} (optim {b['optim']}, grad ckpt {'on' if b['gradient_checkpointing'] else 'off'}, "
            f"build {b['build_s']} s, peak {b.get('peak_gb')} GB)"
        )
        lines.append("")
        lines.append(
            "| variant | wall s/step (unprofiled) | wall ms (profiled) | GPU busy ms | kernel sum ms | "
            "GPU idle ms | kernels | host syncs (sync calls + DtoH) | sync wait ms | CPU ops | "
            "host self ms | launch->start median us |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for v in sorted(set(b["timed"]) | set(b["profiles"])):
            t = b["timed"].get(v, {})
            p = b["profiles"].get(v)
            wall = f"{t['step_s']:.4f}" if t else "-"
            if p:
                m = p["mean"]
                q = p["launch_to_start_us"]["median"]
                lines.append(
                    f"| {v} | {wall} | {m['wall_ms']:.1f} | {m['gpu_busy_ms']:.1f} | {m['kernel_sum_ms']:.1f} | "
                    f"{m['gpu_idle_ms']:.1f} | {m['kernels']:.0f} | {m['host_syncs_total']:.0f} "
                    f"({m['sync_calls_total']:.0f} + {m['dtoh_copies']:.0f}) | {m['sync_wait_ms']:.1f} | "
                    f"{m['cpu_ops']:.0f} | {m['host_self_ms']:.1f} | {'-' if q is None else f'{q:.0f}'} |"
                )
            else:
                lines.append(f"| {v} | {wall} | - | - | - | - | - | - | - | - | - | - |")
        base = b["timed"].get("A")
        if any("wall_s" in t for t in b["timed"].values()):
            lines.append("")
            lines.append(
                "| variant | timed steps | wall ms mean | wall ms median | host issue ms | device tail ms | "
                "process CPU ms | GC ms/step | wall vs A |"
            )
            lines.append("|---|---|---|---|---|---|---|---|---|")
        for v, t in b["timed"].items():
            if "wall_s" not in t:
                continue
            n = len(t["wall_s"])
            vs = f"{(t['step_s'] - base['step_s']) * 1e3:+.1f} ms" if base and v != "A" else "-"
            lines.append(
                f"| {v} | {n} | {t['step_s'] * 1e3:.1f} | {t['step_s_median'] * 1e3:.1f} | "
                f"{statistics.mean(t['issue_s']) * 1e3:.1f} | {statistics.mean(t['tail_s']) * 1e3:.1f} | "
                f"{statistics.mean(t['cpu_s']) * 1e3:.1f} | {sum(t['gc_ms']) / n:.1f} | {vs} |"
            )
        rounds = round_medians(b)
        if rounds and len(rounds.get("A", [])) > 1:
            lines.append("")
            lines.append(
                "per round (each round times every variant in turn; the host's speed drifts between rounds, so "
                "compare within a round): median wall ms, and its difference to A's median in the same round"
            )
            lines.append("")
            lines.append("| variant | round medians ms | minus A, same round |")
            lines.append("|---|---|---|")
            for v, meds in rounds.items():
                diffs = [m - a for m, a in zip(meds, rounds["A"], strict=False)]
                lines.append(
                    f"| {v} | {', '.join(f'{m:.0f}' for m in meds)} | "
                    f"{'-' if v == 'A' else ', '.join(f'{d:+.0f}' for d in diffs)} |"
                )
        if base:
            key = "step_s_median" if "step_s_median" in base else "step_s"  # a median: one slow step skews a mean
            deltas = [
                f"{v}: {(t[key] - base[key]) * 1e3:+.1f} ms ({t[key] / base[key] - 1:+.1%})"
                for v, t in b["timed"].items()
                if v != "A" and key in t
            ]
            lines.append("")
            lines.append(f"unprofiled wall time against A ({key}): " + ", ".join(deltas))
        for v, p in b["profiles"].items():
            lines.append("")
            lines.append(
                f"### {tag}, variant {v}: {p['steps_recorded']} profiled steps "
                f"(trace {p.get('trace_mb')} MB, {p['trace_events']} events)"
            )
            lines.append(
                "per step: "
                + "; ".join(
                    f"wall {s['wall_ms']:.1f} ms, busy {s['gpu_busy_ms']:.1f}, kernels {s['kernels']}, "
                    f"syncs {s['sync_calls_total']}+{s['dtoh_copies']} DtoH"
                    for s in p["per_step"]
                )
            )
            if p["per_step"]:
                lines.append(f"host syncs by phase (last step): {p['per_step'][-1].get('host_syncs_by_phase')}")
            gaps = p["per_step"][-1]["idle_gaps"] if p["per_step"] else {}
            lines.append(
                "idle gaps (last step): " + ", ".join(f"{k}: {g['n']} gaps {g['ms']:.1f} ms" for k, g in gaps.items())
            )
            lines.append("")
            lines.append("| phase | CPU ms/step | GPU ms/step | GPU activities/step |")
            lines.append("|---|---|---|---|")
            for ph, f in p["phases"].items():
                lines.append(
                    f"| {ph} | {f['cpu_ms_per_step']:.1f} | {f['gpu_ms_per_step']:.1f} | "
                    f"{f['gpu_activities_per_step']:.0f} |"
                )
            lines.append("")
            lines.append("| GPU bucket | ms/step | share | count/step |")
            lines.append("|---|---|---|---|")
            for name, f in p["buckets"].items():
                lines.append(f"| {name} | {f['ms_per_step']:.2f} | {f['share']:.1%} | {f['count_per_step']:.0f} |")
            lines.append("")
            lines.append("| top kernel | bucket | ms/step | calls/step | share |")
            lines.append("|---|---|---|---|---|")
            for k in p["top_kernels"]:
                lines.append(
                    f"| `{k['name']}` | {k['bucket']} | {k['ms_per_step']:.2f} | {k['calls_per_step']:.0f} | "
                    f"{k['share']:.1%} |"
                )
            lines.append("")
            lines.append("| top CPU op (self time) | self ms/step | calls/step |")
            lines.append("|---|---|---|")
            for k in p["top_cpu_self"]:
                lines.append(f"| `{k['name']}` | {k['self_ms_per_step']:.2f} | {k['calls_per_step']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the profile."""
    args = parse_args(argv)
    if args.summarize:
        text = summary_text(json.loads(args.summarize.read_text()))
        args.summarize.with_suffix(".txt").write_text(text + "\n")
        print(text)
        return 0
    import torch

    cuda = torch.cuda.is_available()
    if args.shape != "tiny" and not cuda:
        sys.exit(f"--shape {args.shape} needs a CUDA GPU; --shape tiny runs on the CPU")
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    args.stem = args.stem or f"{datetime.now(UTC):%Y-%m-%d}-{slug}-{args.shape}-profile"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows_file = pick_rows_file(args.rows)
    texts = read_texts(rows_file)
    model_dir = (args.model_dir or Path(tempfile.gettempdir()) / "ftq-bench" / f"model-{args.shape}").resolve()
    build_model(args.shape, model_dir, texts, "cuda" if cuda else "cpu")
    flop_params = matmul_params(model_dir)
    import peft  # noqa: F401  (imported before anything is timed)
    import trl  # noqa: F401
    from transformers import AutoTokenizer

    import worker.training  # noqa: F401

    liger_ok = False
    try:
        import liger_kernel  # noqa: F401

        liger_ok = True
    except ImportError:
        pass
    builds = [False] if args.liger == "off" else [True] if args.liger == "on" else [False, True]
    builds = [b for b in builds if not b or (cuda and liger_ok)]

    total_steps = max(sum(ph["steps"] for ph in make_plan(args, v)) for v in (args.variants, args.liger_variants))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "gpu": gpu,
        "shape": args.shape,
        "batch": args.batch,
        "versions": versions() | {"liger_kernel": "importable" if liger_ok else "missing"},
        "command": " ".join(["bench/profile_step.py", *(argv if argv is not None else sys.argv[1:])]),
        "rows_file": str(rows_file),
        "flop_params": flop_params,
        "peak_tflops": 790.0,
        "builds": [],
        "liger_skipped": args.liger != "off" and not (cuda and liger_ok),
    }
    json_path, txt_path = args.out_dir / f"{args.stem}.json", args.out_dir / f"{args.stem}.txt"

    def report() -> None:
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, json_path)
        txt_path.write_text(summary_text(result) + "\n")

    with tempfile.TemporaryDirectory(prefix="ftq-profile-") as tmpdir:
        work = Path(tmpdir)
        rows = make_rows(texts, tokenizer, total_steps * args.batch)
        lengths = [len(tokenizer(r)["input_ids"]) + 1 for r in rows[: args.batch * 8]]
        result["tokens_per_step"] = statistics.mean(lengths) * args.batch
        result["matmul_floor_ms"] = 4 * flop_params * result["tokens_per_step"] / (result["peak_tflops"] * 1e12) * 1e3
        rows_path = work / "rows.jsonl"
        rows_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
        for liger in builds:
            run_build(liger, args, model_dir, rows_path, work, cuda, result["builds"], report)
            report()
    report()
    print()
    print(summary_text(result))
    print(f"results: {json_path} {txt_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
