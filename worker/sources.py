"""Where a job's base model, tokenizer and adapter are read from, without the training stack.

Validation runs these on a CPU worker before a GPU is spent: importing PEFT, TRL and bitsandbytes there would cost
seconds at each worker's first job and hundreds of megabytes for as long as it lives.
"""

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from shared.errors import JobFailure
from shared.paths import check_local_model, refuse_hub_id_shadowed_by_path
from shared.spec import is_job_id, is_local_path


def model_source(ref: str, roots: list[Path]) -> str:
    """Where the base model is read from: a directory under the roots, or a Hub repo id."""
    if is_local_path(ref):
        return str(check_local_model(ref, roots))
    refuse_hub_id_shadowed_by_path(ref, "base_model")
    return ref


def load_tokenizer(ref: str, roots: list[Path], token: str | None = None) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, padding on the right with EOS as the pad token (as in the course).

    `token` reads a gated or private Hub model (None: the environment's `HF_TOKEN`, if any).
    """
    source = model_source(ref, roots)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, token=token)
    except (OSError, ValueError) as exc:
        raise JobFailure(
            f"base model {ref!r} not found or has no tokenizer: {exc}",
            code="model_not_found",
            param="base_model",
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def adapter_source(ref: str, roots: list[Path]) -> str:
    """Where an adapter is read from: a fine-tune job's saved adapter, a local directory under the roots, or a
    Hub repo id (read with the owner's token)."""
    if is_job_id(ref):
        # Imported here: the database stack loads only for a job's adapter (the GPU bench reads paths).
        from shared.db import session_scope
        from shared.jobs import adapter_job_path

        with session_scope() as session:
            path = Path(adapter_job_path(session=session, job_id=ref))
    elif is_local_path(ref):
        path = check_local_model(ref, roots, param="adapter")
    else:
        refuse_hub_id_shadowed_by_path(ref, "adapter")
        return ref
    if not (path / "adapter_config.json").is_file():
        raise JobFailure(f"adapter {ref!r} has no adapter_config.json", code="adapter_not_found", param="adapter")
    return str(path)
