"""The fine-tune job spec: the API's contract, stored resolved on the job and re-validated by the worker.

Defaults are the LLM Engineering course's week-7 QLoRA constants, so a spec naming only a base model and a
dataset reproduces the recipe.
"""

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

HF_REPO_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
LOCAL_PATH_PREFIXES = ("/", "./", "../", "~")

ModelRef = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=1024),
    Field(description="A Hugging Face model id (`org/name`) or a local directory under an allowed root."),
]
DatasetRef = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=1024),
    Field(
        description="A Hugging Face dataset id, or a local .jsonl/.csv/.parquet file or folder under an allowed root."
    ),
]
LoraModule = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")]
MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetaValue = Annotated[str, StringConstraints(max_length=512)]


FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
JOB_ID = re.compile(r"^ftjob-[0-9a-f]{24}$")
AdapterRef = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=1024),
    Field(
        description="A LoRA adapter: the id of a succeeded fine-tune job (`ftjob-...`), a local adapter directory"
        " under an allowed root, or a Hub repo id."
    ),
]


def is_file_id(ref: str) -> bool:
    """True when a dataset reference names an uploaded file."""
    return bool(FILE_ID.match(ref))


def is_job_id(ref: str) -> bool:
    """True when an adapter reference names a fine-tune job of this service."""
    return bool(JOB_ID.match(ref))


def is_local_path(ref: str) -> bool:
    """True when a model or dataset reference names a local path rather than a Hub id."""
    return ref.startswith(LOCAL_PATH_PREFIXES)


def check_ref(ref: str) -> str:
    """Accept a local path or a well-formed Hub id; anything else is a validation error."""
    if not is_local_path(ref) and not HF_REPO_ID.match(ref):
        raise ValueError(
            "must be a Hugging Face id like 'org/name' or a local path starting with '/', './', '../' or '~'"
        )
    return ref


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(_contains_nul(item) for item in value)
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    return False


class Strict(BaseModel):
    """Spec sections refuse unknown fields and NUL characters, and are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        # PostgreSQL cannot store a NUL character in text, and no path, id or name needs one.
        if _contains_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


class DatasetSpec(Strict):
    """Where the training rows come from and how each is split into prompt and completion."""

    id: DatasetRef
    split: str = Field("train", min_length=1, max_length=64, description="Dataset split to train on.")
    text_field: str = Field("text", min_length=1, max_length=128, description="Column holding the training text.")
    response_template: str = Field(
        "Price is $",
        min_length=1,
        max_length=256,
        description="Text that ends the prompt: loss is taken only on what follows its last occurrence.",
    )
    max_rows: int | None = Field(
        None,
        ge=1,
        le=100_000_000,
        description="Train on at most this many rows (the first ones); null for all.",
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return check_ref(value)


class Hyperparameters(Strict):
    """Optimisation settings, mapped onto TRL's `SFTConfig`."""

    epochs: float = Field(1, gt=0, le=100, description="Passes over the dataset (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Stop after this many optimizer steps.")
    batch_size: int = Field(16, ge=1, le=1024, description="Rows per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: Literal[
        "cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"
    ] = Field("cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the steps spent warming up.")
    optimizer: Literal[
        "paged_adamw_32bit",
        "paged_adamw_8bit",
        "adamw_torch",
        "adamw_torch_fused",
        "adamw_8bit",
        "adafactor",
        "sgd",
    ] = Field("paged_adamw_32bit", description="Optimizer, by its transformers name.")
    weight_decay: float = Field(0.001, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(0.3, gt=0, le=100, description="Gradient clipping norm.")
    max_length: int = Field(182, ge=8, le=131_072, description="Tokens per row; longer rows are truncated.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Random seed for data order and LoRA init.")
    save_steps: int = Field(5000, ge=1, le=10_000_000, description="Save a checkpoint every this many steps.")
    logging_steps: int = Field(50, ge=1, le=1_000_000, description="Log loss and learning rate every this many steps.")
    gradient_checkpointing: bool | None = Field(
        None, description="Deprecated: use `performance.gradient_checkpointing` (set here, it wins over `auto`)."
    )


class LoraSpec(Strict):
    """The LoRA adapter attached to the frozen base."""

    r: int = Field(32, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(64, ge=1, le=4096, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[LoraModule] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        max_length=64,
        description="Names of the Linear modules that get an adapter.",
    )


class QuantizationSpec(Strict):
    """How the frozen base is quantized with bitsandbytes."""

    bits: Literal[4] = Field(4, description="Bits per base weight (QLoRA: 4).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Dtype the 4-bit weights are dequantized to for matmuls."
    )


class HubSpec(Strict):
    """Hugging Face Hub repository that checkpoints are pushed to."""

    repo_id: str = Field(..., min_length=3, max_length=200, description="Target repo, `org/name`.")
    private: bool = Field(True, description="Create the repo as private.")

    @field_validator("repo_id")
    @classmethod
    def _check_repo(cls, value: str) -> str:
        if is_local_path(value) or "/" not in value:
            raise ValueError("must be a Hub repo id like 'org/name'")
        return check_ref(value)


class WandbSpec(Strict):
    """Weights & Biases run settings."""

    project: str = Field(..., min_length=1, max_length=128, description="W&B project.")
    entity: str | None = Field(None, min_length=1, max_length=128, description="W&B team or user.")
    run_name: str | None = Field(None, min_length=1, max_length=128, description="Run name; defaults to the job id.")
    tags: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        [], max_length=20, description="Run tags."
    )


class EvaluationSpec(Strict):
    """Score the fine-tune (and, with `baseline`, the base model) on held-out rows after training."""

    dataset: DatasetSpec = Field(..., description="Rows to score: each is split at the template into prompt and truth.")
    metric: Literal["numeric", "exact_match"] = Field(
        "numeric",
        description="numeric: the course's price metrics (MAE, RMSLE, hit rate);"
        " exact_match: the answer equals the truth.",
    )
    max_new_tokens: int = Field(8, ge=1, le=512, description="Tokens generated per answer.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 generates greedily (the default and the course's).")
    batch_size: int = Field(16, ge=1, le=512, description="Prompts generated at once.")
    baseline: bool = Field(False, description="Also score the base model without the adapter.")
    at_checkpoints: bool = Field(
        False, description="Fine-tune jobs: also score the adapter at each saved checkpoint (fine-tune only)."
    )

    def answers_for(self, rows: int) -> int:
        """Answers generated for `rows` rows: one each, and one more each from the base model with `baseline`."""
        return rows * (2 if self.baseline else 1)


Auto = Literal["auto"]


class PerformanceSpec(Strict):
    """How the worker runs the recipe fast; `auto` lets it choose from the GPU and its free memory, and the worker
    reports what it chose. Of the `auto` choices only `compile` changes the arithmetic of a step at the spec's own
    batch size, and only its rounding order (pin it `false` for the recipe's exact numbers); `liger` and `fp8` change
    it too, and run only when asked."""

    gradient_checkpointing: Auto | bool = Field(
        "auto", description="Recompute activations in the backward pass (less memory, about half the speed)."
    )
    liger: Auto | bool = Field(
        "auto",
        description="Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU): CUDA only; less memory, another rounding"
        " (auto: off, as measured no faster beside cached dequantized weights).",
    )
    cache_dequantized: Auto | bool = Field(
        "auto",
        description="Dequantize each 4-bit weight once and keep the bf16 copy instead of every step (same numbers,"
        " about 2 bytes a parameter more GPU memory).",
    )
    compile: Auto | bool = Field(
        "auto",
        description="torch.compile each decoder layer: steps about a quarter shorter after seconds of compiling,"
        " another rounding order (auto: on for a one-GPU CUDA job with Triton and the activations kept).",
    )
    fp8: Auto | bool = Field(
        "auto",
        description="The frozen 4-bit base's MLP products on FP8 tensor cores (e4m3, rowwise scales; GPUs of compute"
        " capability 8.9+): faster steps with `compile` (slower without), each product's inputs rounded to 3 mantissa"
        " bits (auto: off).",
    )
    lean_optimizer: Auto | bool = Field(
        "auto",
        description="bitsandbytes optimizers (paged_adamw_32bit, ...): the same kernels on the same stream, without"
        " the device synchronization bitsandbytes makes after each parameter (auto: on CUDA).",
    )
    micro_batch: Auto | int | None = Field(
        None,
        description="Throughput mode: `auto` takes the largest micro-batch that fits, with gradient accumulation"
        " keeping the effective batch (batch_size x gradient_accumulation_steps); null trains as specified.",
    )

    @field_validator("micro_batch")
    @classmethod
    def _check_micro_batch(cls, value: object) -> object:
        if isinstance(value, int) and not 1 <= value <= 1024:
            raise ValueError("micro_batch is auto, null or 1-1024")
        return value


class ResourcesSpec(Strict):
    """What the job holds while it runs."""

    gpus: int = Field(
        1,
        ge=1,
        le=16,
        description="GPUs of one box the job trains on, data-parallel (it waits until that many are free there)."
        " The effective batch stays the spec's: batch_size is split across them, so it must divide by gpus.",
    )
    time_limit_minutes: int | None = Field(
        None,
        ge=1,
        le=43_200,
        description="Stop and fail the job (time_limit_exceeded) once an attempt has run this long; null for no"
        " limit. A job with a limit may start on GPUs held for a larger job if it ends before they are needed.",
    )


JobKind = Literal["fine_tune", "evaluation"]
TRAINING_ONLY = "applies to fine_tune jobs only; an evaluation job trains nothing"


class JobSpec(Strict):
    """A QLoRA supervised fine-tune (`kind: fine_tune`, the default), or the scoring of an existing adapter or base
    model on held-out rows without training (`kind: evaluation`)."""

    kind: JobKind = Field("fine_tune", description="fine_tune trains an adapter; evaluation only scores one.")
    base_model: ModelRef
    adapter: AdapterRef | None = Field(
        None, description="Evaluation jobs: the adapter to score on `base_model`; null scores the base model alone."
    )
    dataset: DatasetSpec | None = Field(
        None, validate_default=True, description="Training rows and how to split them (fine_tune jobs: required)."
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        validate_default=True,
        description="Optimisation settings; defaults are the course's.",
    )
    lora: LoraSpec = Field(
        default_factory=LoraSpec, validate_default=True, description="The LoRA adapter; defaults are the course's."
    )
    quantization: QuantizationSpec = Field(
        default_factory=QuantizationSpec, description="4-bit quantization of the frozen base model."
    )
    performance: PerformanceSpec = Field(
        default_factory=PerformanceSpec,
        validate_default=True,
        description="Speed settings; `auto` chooses from the GPU's free memory.",
    )
    evaluation: EvaluationSpec | None = Field(
        None,
        validate_default=True,
        description="Score the result on held-out rows after training (evaluation jobs: required).",
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="GPUs and time the job may hold; one GPU and no limit by default."
    )
    hub: HubSpec | None = Field(None, description="Push checkpoints to this Hub repo; null for no push.")
    wandb: WandbSpec | None = Field(None, description="Log to this W&B project; null for no W&B run.")
    metadata: dict[MetaKey, MetaValue] = Field(
        {}, max_length=16, description="Up to 16 string pairs for your own bookkeeping."
    )

    @field_validator("base_model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        return check_ref(value)

    @field_validator("adapter")
    @classmethod
    def _check_adapter(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("kind") != "evaluation":
            raise ValueError("applies to evaluation jobs only (kind: evaluation)")
        return value if is_job_id(value) else check_ref(value)

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, value: DatasetSpec | None, info: ValidationInfo) -> DatasetSpec | None:
        evaluating = info.data.get("kind") == "evaluation"
        if value is None and not evaluating:
            raise ValueError("a fine_tune job needs its training rows")
        if value is not None and evaluating:
            raise ValueError("an evaluation job trains nothing: name the rows to score in evaluation.dataset")
        return value

    @field_validator("hyperparameters", "lora", "performance", "hub", "wandb")
    @classmethod
    def _training_only(cls, value: BaseModel | None, info: ValidationInfo) -> BaseModel | None:
        # An evaluation job may carry these sections only as their defaults (what a stored spec holds). The kind is
        # checked first: building a default costs more than the rest of validating a spec, and every job read
        # validates its stored spec.
        if info.data.get("kind") != "evaluation":
            return value
        if value != cls.model_fields[str(info.field_name)].get_default(call_default_factory=True):
            raise ValueError(TRAINING_ONLY)
        return value

    @field_validator("evaluation")
    @classmethod
    def _check_evaluation(cls, value: EvaluationSpec | None, info: ValidationInfo) -> EvaluationSpec | None:
        if info.data.get("kind") != "evaluation":
            return value
        if value is None:
            raise ValueError("an evaluation job needs its evaluation block (the rows to score and how)")
        if value.baseline and "adapter" in info.data and info.data["adapter"] is None:  # (a bad adapter is told)
            raise ValueError("baseline compares an adapter with its base model: set adapter, or leave baseline off")
        if value.at_checkpoints:
            raise ValueError("at_checkpoints applies to fine_tune jobs (an evaluation job has no checkpoints)")
        return value

    @property
    def training_rows(self) -> DatasetSpec:
        """The training dataset of a fine-tune job (validation guarantees it is there)."""
        if self.dataset is None:
            raise ValueError(f"a {self.kind} job has no training rows")
        return self.dataset

    def datasets(self) -> list[tuple[str, DatasetSpec]]:
        """Every dataset the job reads, with the field that names it."""
        named = [
            ("dataset", self.dataset),
            ("evaluation.dataset", self.evaluation.dataset if self.evaluation else None),
        ]
        return [(param, dataset) for param, dataset in named if dataset is not None]

    def main_dataset(self) -> tuple[str, DatasetSpec]:
        """The rows the job works through: its training rows, or for an evaluation job the rows it scores."""
        return self.datasets()[0]
