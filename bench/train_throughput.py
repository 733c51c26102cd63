"""Training throughput: the course's QLoRA recipe as a plain TRL script, beside ftq's worker training path.

In one process on one device, both paths train the same model (built from a LlamaConfig with seeded random
weights, saved once and loaded through `from_pretrained` like a real checkpoint) on the same pricer rows
(170-182 tokens each, the price as the completion after "Price is $"), and the script prints for each:
non-pad tokens/s, seconds per step, peak GPU memory, time to first step, MFU (CUDA only), the logged loss of
the first 50 steps, and the ratio to the reference. The whole result goes to a JSON file (`--out`).

The ratio is taken twice: over the timed steps' mean (tokens/s), and over their median step (the steady state).
They part when a path stalls for seconds on a few steps (`stalls`: steps over 4x the median; seen on a fresh
machine in the first process, on the same steps of both paths when each ran in its own process): a long job pays
such a stall once, a 50-step run pays it on a tenth of its steps.

    python bench/train_throughput.py --shape tiny --steps 3 --warmup 1     # CPU, seconds
    python bench/train_throughput.py --shape 8b --steps 50 --warmup 5      # one GPU (see bench/README.md)

`reference` is the course's week-7 script on today's stack (TRL 1.16: a prompt/completion dataset with
completion-only loss instead of the removed DataCollatorForCompletionOnlyLM). `ftq` is `worker.training.build_trainer`
on a JobSpec holding the same settings (the spec's defaults are the course's), then `trainer.train()`.
"""

import argparse
import gc
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python bench/train_throughput.py` puts bench/ first, not the repo
# Nothing here may reach the Hub: the model and tokenizer are local, and the GPU machine has no network.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEED = 42
MAX_LENGTH = 182  # the course's MAX_SEQUENCE_LENGTH
MIN_ROW_TOKENS = 170  # pricer rows run 170-182 tokens with Llama 3's tokenizer
TEMPLATE = "Price is $"
TOKENIZER_VOCAB = 8192
TOKENIZER_ROWS = 2000  # rows the BPE tokenizer is trained on
LOSS_STEPS = 50
STALL_FACTOR = 4  # a step over 4x the median is a stall (seconds, not the few percent steps vary by)
PROGRESS_INTERVAL_S = 1.0  # the worker's default FTQ_PROGRESS_INTERVAL
SHARED_ROWS = REPO.parent / "shared" / "data" / "pricer" / "train.jsonl"
REPO_ROWS = REPO / "examples" / "data" / "pricer-400.jsonl"
RESULTS = REPO / "bench" / "results"
GIB = 2**30

# Llama-3.1-8B and Llama-3.2-1B as published (config.json), and a CPU-sized Llama. vocab_size None: the tokenizer's.
SHAPES: dict[str, dict[str, Any]] = {
    "8b": {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    },
    "1b": {
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    },
    "tiny": {
        "vocab_size": None,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="model shape (8b and 1b need CUDA)")
    p.add_argument("--steps", type=int, help="optimizer steps per path (default 50; tiny: 8)")
    p.add_argument("--warmup", type=int, help="first steps left out of the timing (default 5; tiny: 2)")
    p.add_argument("--batch", type=int, default=16, help="rows per step (the course's 16)")
    p.add_argument(
        "--accumulation",
        type=int,
        default=1,
        help="ftq only: micro-batches per optimizer step (the spec's gradient_accumulation_steps); with"
        ' --ftq-performance \'{"micro_batch": "auto"}\' this runs the worker\'s throughput mode',
    )
    p.add_argument("--only", choices=["reference", "ftq"], help="run one path only")
    p.add_argument("--model-dir", type=Path, help="where the random model is built once and reused")
    p.add_argument("--rows", type=Path, help="pricer .jsonl with a 'text' column (default: shared data, else bundled)")
    p.add_argument("--out", type=Path, help="result file (default: <out-dir>/<date>-<gpu>-<shape>.json)")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="folder of the default result file (bench/results)")
    p.add_argument("--work-dir", type=Path, help="rows, checkpoints and outputs (default: a temporary directory)")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 TFLOP/s for MFU (H200: ~790)")
    p.add_argument(
        "--ftq-performance",
        type=json.loads,
        default={},
        help="ftq's spec.performance as JSON, e.g. '{\"liger\": false}' (default: the worker chooses)",
    )
    p.add_argument(
        "--reference-group-by-length",
        action="store_true",
        help="give the reference the course's group_by_length=True (then the paths see different batches)",
    )
    args = p.parse_args(argv)
    tiny = args.shape == "tiny"
    args.steps = args.steps if args.steps is not None else (8 if tiny else LOSS_STEPS)
    args.warmup = args.warmup if args.warmup is not None else (2 if tiny else 5)
    if args.steps <= args.warmup:
        p.error("--steps must be larger than --warmup: at least one timed step is needed")
    if args.warmup < 1:
        p.error("--warmup must be at least 1: step 1 allocates the optimizer state and is never typical")
    if args.accumulation < 1 or (args.accumulation > 1 and args.only != "ftq"):
        p.error("--accumulation N > 1 needs --only ftq (the reference trains --batch rows a step)")
    return args


# ---------------------------------------------------------------------------------------------------------------
# The model and the rows


def pick_rows_file(path: Path | None) -> Path:
    """The rows to train on: the named file, else the shared pricer data, else the slice in the repo."""
    if path is not None:
        return path.resolve()
    return SHARED_ROWS.resolve() if SHARED_ROWS.exists() else REPO_ROWS


def read_texts(path: Path) -> list[str]:
    """The 'text' column of a .jsonl file, keeping rows that hold the response template."""
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return [t for t in texts if TEMPLATE in t]


def build_model(shape: str, model_dir: Path, texts: list[str], device: str) -> None:
    """Write a seeded random Llama of the shape (bf16 safetensors) and a BPE tokenizer to `model_dir`, once.

    The tokenizer is ftq's stand-in (worker/tiny_model.py: byte-level BPE trained on the rows, BOS prepended,
    digits split); the rows are then cut to Llama-3 token counts (see `make_rows`).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from worker.tiny_model import train_tokenizer

    marker = model_dir / "bench-model.json"
    if marker.exists():
        built = json.loads(marker.read_text())
        if built["shape"] != shape:
            sys.exit(f"{model_dir} holds the {built['shape']} shape, not {shape}: pass another --model-dir")
        return
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(texts[:TOKENIZER_ROWS], vocab_size=TOKENIZER_VOCAB)
    fields = dict(SHAPES[shape])
    fields["vocab_size"] = fields["vocab_size"] or len(tokenizer)
    config = LlamaConfig(**fields, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    partial = model_dir.with_name(model_dir.name + ".partial")  # a killed build leaves no half model behind
    model.save_pretrained(partial, max_shard_size="5GB")
    tokenizer.save_pretrained(partial)
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    (partial / "bench-model.json").write_text(json.dumps({"shape": shape, "params": params, "seed": 0}))
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(model_dir)
    print(
        json.dumps({"built": str(model_dir), "shape": shape, "params": params, "s": round(time.perf_counter() - t0, 1)})
    )


def make_rows(texts: list[str], tokenizer: Any, n: int) -> list[str]:
    """`n` pricer texts of 170-182 tokens each (BOS, prompt, price, EOS: as both paths will tokenize them).

    As the course did with Llama 3's tokenizer, long descriptions are cut (here at a word boundary) so the whole
    row fits a length drawn uniformly from 170-182; rows too short for 170 are skipped. If the file has fewer
    usable rows than `n`, they are repeated in order.
    """
    rng = random.Random(SEED)

    def length(text: str) -> int:
        return len(tokenizer(text)["input_ids"]) + 1  # + EOS

    rows: list[str] = []
    for text in texts:
        head, template, price = text.rpartition(TEMPLATE)
        words = head.rstrip("\n").split(" ")
        target = rng.randint(MIN_ROW_TOKENS, MAX_LENGTH)

        def cut(k: int, words: list[str] = words, tail: str = template + price) -> str:
            return " ".join(words[:k]) + "\n\n" + tail

        lo, hi = 0, len(words)  # the longest prefix of words whose row fits the target
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if length(cut(mid)) <= target:
                lo = mid
            else:
                hi = mid - 1
        row = cut(lo)
        if MIN_ROW_TOKENS <= length(row) <= MAX_LENGTH:
            rows.append(row)
        if len(rows) == n:
            return rows
    if not rows:
        sys.exit(f"no row of the data reaches {MIN_ROW_TOKENS} tokens")
    print(f"note: only {len(rows)} usable rows for {n}; repeating them", file=sys.stderr)
    return [rows[i % len(rows)] for i in range(n)]


def matmul_params(model_dir: Path) -> int:
    """Weights of the decoder blocks' matrix products (q, k, v, o, gate, up, down), counted on the meta device.

    Left out: the embedding (a lookup, no FLOPs), the norms (no matmul) and the LM head, which TRL 1.16's fused
    head evaluates only at the few completion positions (about 7 of ~176 tokens a row), not at every token.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2)


# ---------------------------------------------------------------------------------------------------------------
# The two paths. Each returns a ready trainer; neither knows it is being measured.


def build_reference(model_dir: Path, rows_path: Path, args: argparse.Namespace, out_dir: Path) -> Any:
    """The course's week-7 training script (Day 3/4 Colab), ported as published to transformers 5.23 / TRL 1.16.

    Kept as the course wrote it, not as ftq does it: AutoTokenizer with pad = EOS on the right, a 4-bit nf4 base
    with device_map="auto", a text dataset split at "Price is $" into prompt/completion (TRL tokenizes it and
    masks the prompt), LoraConfig r=32/alpha=64/dropout 0.1 on q, k, v, o, and the course's SFTConfig. Left out:
    the Hub push and W&B (offline), and evaluation (the course set eval_strategy="no").
    """
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
    from trl import SFTConfig, SFTTrainer

    # The course relies on SFTConfig's seed, which TRL 1.16 applies only after it has created the LoRA layers;
    # seeding first makes the LoRA init reproducible (and the same as ftq's, which seeds before loading too).
    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    quant_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_type="nf4",
    )
    base_model = AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        quantization_config=quant_config,
        device_map="auto" if torch.cuda.is_available() else {"": "cpu"},
    )
    base_model.generation_config.pad_token_id = tokenizer.pad_token_id

    def to_prompt_completion(example: dict[str, str]) -> dict[str, str]:
        head, template, price = example["text"].rpartition(TEMPLATE)
        return {"prompt": head + template, "completion": price}

    train = load_dataset("json", data_files=str(rows_path), split="train")
    train = train.map(to_prompt_completion, remove_columns=["text"])

    lora_parameters = LoraConfig(
        lora_alpha=64,
        lora_dropout=0.1,
        r=32,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "v_proj", "k_proj", "o_proj"],
    )
    train_parameters = SFTConfig(
        output_dir=str(out_dir),
        num_train_epochs=1,
        max_steps=args.steps,  # the course trains one epoch (max_steps=-1); the bench stops after --steps
        per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=1,
        eval_strategy="no",
        gradient_accumulation_steps=1,
        optim="paged_adamw_32bit",
        save_steps=5000,
        save_total_limit=10,
        logging_steps=50,  # the course's; each step's loss is read from the training step (count_batches)
        learning_rate=1e-4,
        weight_decay=0.001,
        fp16=False,
        bf16=True,
        max_grad_norm=0.3,
        warmup_steps=0.03,  # the course's warmup_ratio=0.03: a float below 1 is a ratio in transformers 5
        # The course sets group_by_length=True. Off by default here so both paths train on the same batches in the
        # same order and their losses compare step for step; with rows of 170-182 tokens it changes padding by
        # a few percent at most (the result reports padded and real tokens per step).
        train_sampling_strategy="group_by_length" if args.reference_group_by_length else "random",
        lr_scheduler_type="cosine",
        report_to="none",
        run_name="bench-reference",
        max_length=MAX_LENGTH,  # the course's max_seq_length
        save_strategy="steps",
        completion_only_loss=True,  # what DataCollatorForCompletionOnlyLM("Price is $") did
        seed=SEED,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        # gradient_checkpointing: not set, as in the course; TRL 1.16's default is True.
    )
    return SFTTrainer(
        model=base_model,
        train_dataset=train,
        peft_config=lora_parameters,
        args=train_parameters,
        processing_class=tokenizer,
    )


class CollectingReporter:
    """A worker.progress.Reporter that keeps what it is told and never stops training (the worker's writes to
    the database are not part of what is measured)."""

    def __init__(self) -> None:
        self.dataset_stats: dict[str, int] = {}
        self.last_progress: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []  # what the worker logs (its performance choices, say)
        self.checkpoints: list[int] = []

    def stats(self, stats: Any) -> bool:
        self.dataset_stats = stats.as_dict()
        return True

    def progress(self, progress: dict[str, Any]) -> str:
        self.last_progress = dict(progress)
        return "continue"

    def metrics(self, step: int, metrics: dict[str, float | None]) -> None:
        pass  # the losses are read from the trainer's log history, as for the reference

    def log(self, message: str, data: dict[str, Any]) -> None:
        self.events.append({"message": message, "data": data})

    def wandb(self, run_id: str, url: str | None, directory: str, mode: str) -> None:
        self.events.append({"message": "wandb", "data": {"run_id": run_id, "mode": mode}})

    def hub_commit(self, step: int | None, url: str) -> None:
        self.events.append({"message": "hub commit", "data": {"step": step, "url": url}})

    def hub_failed(self, step: int | None, message: str) -> None:
        self.events.append({"message": "hub failed", "data": {"step": step, "error": message}})

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float | None]) -> None:
        self.checkpoints.append(step)

    def summary(self) -> dict[str, Any]:
        """What the worker reported, for the result file."""
        return {
            "dataset_stats": self.dataset_stats,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "progress": self.last_progress,  # the worker's own tokens_per_second: from train start, warm-up included
        }


def build_ftq(
    model_dir: Path, rows_path: Path, args: argparse.Namespace, job_dir: Path
) -> tuple[Any, CollectingReporter]:
    """ftq's worker path: a JobSpec with the course's defaults, pointed at the local model and rows."""
    from shared.spec import DatasetSpec, Hyperparameters, JobSpec, PerformanceSpec
    from worker.training import build_trainer

    spec = JobSpec(
        base_model=str(model_dir),
        dataset=DatasetSpec(id=str(rows_path)),
        hyperparameters=Hyperparameters(  # logs every 50, as the course
            max_steps=args.steps, batch_size=args.batch, gradient_accumulation_steps=args.accumulation
        ),
        performance=PerformanceSpec.model_validate(args.ftq_performance),
    )
    reporter = CollectingReporter()
    roots = [model_dir.resolve(), rows_path.parent.resolve()]
    trainer, _stats = build_trainer(spec, job_dir, roots, reporter, job_id="bench-ftq", interval_s=PROGRESS_INTERVAL_S)
    return trainer, reporter


# ---------------------------------------------------------------------------------------------------------------
# Measurement


def _now(cuda: bool) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def make_clock(cuda: bool, synced_steps: tuple[int, ...]) -> Any:
    """A TrainerCallback that notes the wall time at train start and at each step's end.

    Only at `synced_steps` (the first step, the end of the warm-up and the last step) does it wait for the device
    first: a sync at every step would stop the host from queueing the next step while the GPU finishes this one,
    which a real job does not do. Between synced steps the times are when the host got there; the timed window
    runs from one synced step to another, so its length is exact.
    """
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.train_begin = 0.0
            self.step_end: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.train_begin = _now(cuda)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            synced = state.global_step in synced_steps or state.global_step >= state.max_steps
            self.step_end.append(_now(cuda) if synced else time.perf_counter())

    return StepClock()


def _weighted_sum(t: Any) -> Any:
    import torch

    flat = t.reshape(-1).to(torch.int64)
    weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.int64) % 1_000_003
    return (flat * weights).sum()


def count_batches(trainer: Any) -> list[dict[str, Any]]:
    """Wrap `trainer.training_step` to record, for every micro-batch, the tokens it really holds.

    Tokens are counted from the collated batch the model receives: `attention_mask.sum()` is the non-pad tokens
    (prompt, completion and EOS; pad is EOS here, so the mask, not the token id, tells them apart),
    `labels != -100` the tokens carrying loss, and `input_ids.numel()` the padded size. This sees exactly what both
    trainers train on, whatever their tokenization or sampling; a callback could not (on_step_begin gets no batch).
    The sums stay on the device until training ends, so counting adds no host sync to the timed steps. A digest of
    input_ids and labels tells whether the two paths trained on the same batches.
    """
    records: list[dict[str, Any]] = []
    inner = trainer.training_step

    def training_step(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        ids, labels = inputs["input_ids"], inputs["labels"]
        mask = inputs.get("attention_mask")
        records.append(
            {
                "step": trainer.state.global_step + 1,
                "tokens": mask.sum() if mask is not None else ids.numel(),
                "loss_tokens": (labels != -100).sum(),
                "padded_tokens": ids.numel(),
                "digest": _weighted_sum(ids) * 7919 + _weighted_sum(labels),
            }
        )
        loss = inner(model, inputs, num_items_in_batch)
        records[-1]["loss"] = loss.detach()  # what the Trainer adds up for its logged loss, read after training
        return loss

    trainer.training_step = training_step  # an instance attribute: Trainer calls self.training_step(...)
    return records


def per_step(records: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """Per optimizer step (micro-batches summed): tokens, loss tokens, padded tokens, the loss and the batch digest."""
    out = [{"tokens": 0, "loss_tokens": 0, "padded_tokens": 0, "digest": 0, "loss": 0.0} for _ in range(steps)]
    for r in records:
        if 1 <= r["step"] <= steps:
            row = out[r["step"] - 1]
            for key in ("tokens", "loss_tokens", "padded_tokens"):
                row[key] += int(r[key])
            row["loss"] += float(r["loss"])
            row["digest"] = (row["digest"] * 31 + int(r["digest"])) % (1 << 61)
    return out


def measure(
    name: str,
    build: Callable[[], tuple[Any, CollectingReporter | None]],
    args: argparse.Namespace,
    cuda: bool,
    flop_params: int,
) -> dict[str, Any]:
    """Build one path's trainer, train it for --steps, and return its figures."""
    import torch

    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start_bytes = torch.cuda.memory_allocated() if cuda else 0
    t0 = _now(cuda)  # start: tokenizer, rows and model loading are all in the time to first step
    trainer, reporter = build()
    t_built = _now(cuda)
    clock = make_clock(cuda, synced_steps=(1, args.warmup))
    trainer.add_callback(clock)
    records = count_batches(trainer)
    trainable = int(trainer.model.get_nb_trainable_parameters()[0])
    trainer.train()
    peak_bytes = torch.cuda.max_memory_allocated() if cuda else None
    reserved_bytes = torch.cuda.max_memory_reserved() if cuda else None

    times = clock.step_end
    steps = len(times)
    if steps != args.steps:
        raise RuntimeError(f"{name}: {steps} steps ran, {args.steps} were asked for")
    rows = per_step(records, steps)
    w = args.warmup
    timed_s = times[-1] - times[w - 1]
    timed_tokens = sum(r["tokens"] for r in rows[w:])
    intervals = [b - a for a, b in zip(times[w - 1 : -1], times[w:], strict=True)]
    tokens_per_s = timed_tokens / timed_s
    flops_per_token = 4 * flop_params + 6 * trainable  # frozen base: forward + input grads; LoRA: + weight grads
    losses = [r["loss"] for r in rows][:LOSS_STEPS]
    median = statistics.median(intervals)
    stalls = [interval for interval in intervals if interval > STALL_FACTOR * median]
    result = {
        "path": name,
        "tokens_per_s": round(tokens_per_s, 1),
        "step_s": round(timed_s / (steps - w), 4),
        "step_s_median": round(median, 4),
        "stalls": len(stalls),
        "stall_s": round(sum(stalls), 2),
        "peak_gb": round(peak_bytes / GIB, 2) if cuda else None,
        "peak_reserved_gb": round(reserved_bytes / GIB, 2) if cuda else None,
        "start_gb": round(start_bytes / GIB, 2) if cuda else None,
        "first_step_s": round(times[0] - t0, 2),
        "setup_s": round(t_built - t0, 2),
        "mfu": round(tokens_per_s * flops_per_token / (args.peak_tflops * 1e12), 4) if cuda else None,
        "flops_per_token": flops_per_token,
        "trainable_params": trainable,
        "timed_steps": steps - w,
        "timed_tokens": timed_tokens,
        "tokens_per_step": round(statistics.mean(r["tokens"] for r in rows), 1),
        "padded_tokens_per_step": round(statistics.mean(r["padded_tokens"] for r in rows), 1),
        "loss_tokens_per_step": round(statistics.mean(r["loss_tokens"] for r in rows), 1),
        "gradient_checkpointing": bool(trainer.args.activation_checkpointing),
        "train_rows": len(trainer.train_dataset),
        "losses": losses,
        "step_end_s": [round(t - t0, 4) for t in times],
        "per_step": rows,
        "worker": reporter.summary() if reporter is not None else None,
    }
    del trainer, clock, records
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------------------------
# Output


def versions() -> dict[str, str]:
    """Versions of the training stack in this process."""
    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for dist in ("transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def compare(paths: list[dict[str, Any]]) -> None:
    """Add to each path its ratio to the reference, the largest loss gap over the first 50 steps and how many
    steps trained on the same batch as the reference's (None where there is nothing to compare with)."""
    ref = next((p for p in paths if p["path"] == "reference"), None)
    for p in paths:
        p.update(ratio=None, ratio_median=None, max_loss_diff=None, same_batches=None)
        if ref is None:
            continue
        p["ratio"] = round(p["tokens_per_s"] / ref["tokens_per_s"], 3)
        steady = p["tokens_per_step"] / p["step_s_median"], ref["tokens_per_step"] / ref["step_s_median"]
        p["ratio_median"] = round(steady[0] / steady[1], 3)
        if p is ref:
            continue
        pairs = list(zip(p["losses"], ref["losses"], strict=False))
        p["max_loss_diff"] = max((abs(a - b) for a, b in pairs), default=None)
        p["same_batches"] = sum(
            a["digest"] == b["digest"] for a, b in zip(p["per_step"], ref["per_step"], strict=False)
        )


def table(paths: list[dict[str, Any]], cuda: bool) -> str:
    """The summary table, as Markdown."""

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    head = ["path", "tokens/s", "s/step", "median s/step", "stalls (s)", "peak GB", "first-step s"]
    head += (["MFU"] if cuda else []) + ["grad ckpt", "ratio", "ratio (median)", "max loss diff", "same batches"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in paths:
        cells = [p["path"], fmt(p["tokens_per_s"], ",.0f"), fmt(p["step_s"], ".3f"), fmt(p["step_s_median"], ".3f")]
        cells += [f"{p['stalls']} ({p['stall_s']:.1f})", fmt(p["peak_gb"], ".2f"), fmt(p["first_step_s"], ".1f")]
        if cuda:
            cells.append(fmt(p["mfu"], ".1%"))
        cells.append("on" if p["gradient_checkpointing"] else "off")
        cells += [fmt(p["ratio"], ".3f"), fmt(p["ratio_median"], ".3f"), fmt(p["max_loss_diff"], ".2e")]
        cells.append("-" if p["same_batches"] is None else f"{p['same_batches']}/{len(p['per_step'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_out(folder: Path, gpu: str, shape: str) -> Path:
    """<folder>/<date>-<gpu>-<shape>.json, numbered if that name is taken."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    stem = f"{datetime.now(UTC):%Y-%m-%d}-{slug}-{shape}"
    path, n = folder / f"{stem}.json", 2
    while path.exists():
        path, n = folder / f"{stem}-{n}.json", n + 1
    return path


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write the result whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)


def preload(only: str | None) -> None:
    """Import both paths' libraries before either is timed, so that neither pays the process's import costs."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401

    if only != "reference":
        import worker.training  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if args.shape != "tiny" and not cuda:
        sys.exit(f"--shape {args.shape} needs a CUDA GPU; --shape tiny runs on the CPU")
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    rows_file = pick_rows_file(args.rows)
    texts = read_texts(rows_file)
    model_dir = (args.model_dir or Path(tempfile.gettempdir()) / "ftq-bench" / f"model-{args.shape}").resolve()
    build_model(args.shape, model_dir, texts, "cuda" if cuda else "cpu")
    flop_params = matmul_params(model_dir)

    with tempfile.TemporaryDirectory(prefix="ftq-bench-") as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        from transformers import AutoTokenizer

        preload(args.only)
        rows = make_rows(
            texts, AutoTokenizer.from_pretrained(str(model_dir)), args.steps * args.batch * args.accumulation
        )
        # The same rows in one file per path, so that the second path does not find the first one's rows already
        # prepared in the `datasets` cache (keyed by file path), which would shorten its time to first step.
        rows_files = {name: work / f"rows-{name}.jsonl" for name in ("reference", "ftq")}
        for path in rows_files.values():
            path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))

        builders: dict[str, Callable[[], tuple[Any, CollectingReporter | None]]] = {
            "reference": lambda: (build_reference(model_dir, rows_files["reference"], args, work / "reference"), None),
            "ftq": lambda: build_ftq(model_dir, rows_files["ftq"], args, work / "ftq-job"),
        }
        paths = []
        for name, build in builders.items():
            if args.only and name != args.only:
                continue
            paths.append(measure(name, build, args, cuda, flop_params))
            summary = {k: v for k, v in paths[-1].items() if k not in ("step_end_s", "per_step", "worker")}
            print(json.dumps(summary), flush=True)

    compare(paths)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "gpu": gpu,
        "shape": args.shape,
        "batch": args.batch,
        "accumulation": args.accumulation,
        "steps": args.steps,
        "warmup": args.warmup,
        "max_length": MAX_LENGTH,
        "rows_file": str(rows_file),
        "reference_group_by_length": args.reference_group_by_length,
        "peak_tflops": args.peak_tflops if cuda else None,
        "flop_params": flop_params,
        "versions": versions(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "paths": paths,
    }
    out = args.out or default_out(args.out_dir, gpu, args.shape)
    write_result(out, result)
    print()
    print(f"{gpu}, {args.shape}, batch {args.batch}, {args.steps} steps ({args.warmup} warm-up), {result['versions']}")
    print(table(paths, cuda))
    for p in paths:
        for event in (p["worker"] or {}).get("events", []):
            print(f"{p['path']} worker: {event['message']}")
    print(f"result: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
